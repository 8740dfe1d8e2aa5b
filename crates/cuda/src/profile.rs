//! Where the fast path's time goes, kernel by kernel: with profiling on, every launch on
//! Ember's stream is bracketed by CUDA events and filed under a category (base GEMMs, adapter
//! GEMMs, attention, norms, ...), with the FLOPs of each GEMM, so `ember bench --breakdown` can
//! report time and achieved TFLOP/s per category. Off, it costs nothing.

use std::collections::BTreeMap;

use cudarc::driver::{result, sys};

use crate::error::Result;

#[derive(Default)]
pub struct Profile {
    on: bool,
    /// Events recorded since the last report: (start, end, category, FLOPs).
    pending: Vec<(sys::CUevent, sys::CUevent, &'static str, f64)>,
    spare: Vec<sys::CUevent>,
    /// Milliseconds and FLOPs per category since profiling was switched on.
    totals: BTreeMap<&'static str, (f64, f64)>,
}

impl Profile {
    pub fn set(&mut self, on: bool) {
        self.on = on;
        self.totals.clear();
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// An event recorded on `stream` now (None when profiling is off).
    pub fn mark(&mut self, stream: sys::CUstream) -> Result<Option<sys::CUevent>> {
        if !self.on {
            return Ok(None);
        }
        let event = match self.spare.pop() {
            Some(e) => e,
            None => result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)?,
        };
        unsafe { result::event::record(event, stream)? };
        Ok(Some(event))
    }

    pub fn file(&mut self, start: Option<sys::CUevent>, end: Option<sys::CUevent>, category: &'static str, flops: f64) {
        if let (Some(start), Some(end)) = (start, end) {
            self.pending.push((start, end, category, flops));
        }
    }

    /// Adds the pending events' times to the totals (the stream must have been synchronised).
    pub fn collect(&mut self) -> Result<()> {
        for (start, end, category, flops) in self.pending.drain(..) {
            let ms = unsafe { result::event::elapsed(start, end)? } as f64;
            let total = self.totals.entry(category).or_default();
            total.0 += ms;
            total.1 += flops;
            self.spare.extend([start, end]);
        }
        Ok(())
    }

    /// `(category, milliseconds, FLOPs)` since profiling was switched on.
    pub fn totals(&self) -> Vec<(&'static str, f64, f64)> {
        self.totals.iter().map(|(c, (ms, flops))| (*c, *ms, *flops)).collect()
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        for event in self
            .spare
            .drain(..)
            .chain(self.pending.drain(..).flat_map(|(s, e, _, _)| [s, e]))
        {
            unsafe {
                let _ = result::event::destroy(event);
            }
        }
    }
}
