//! Where a step's time and memory go, measured on request: each phase boundary waits for the
//! device, which would slow normal training, so only benchmarks ask for it.

use std::any::Any;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

/// The phases of an optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Forward through the decoder layers (without autodiff when checkpointing).
    Forward,
    /// LM head and loss, forward and backward.
    Head,
    /// Backward through the decoder layers (recompute included when checkpointing).
    Backward,
    /// Gradient norm, clipping and the optimizer update.
    Optimizer,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Forward, Phase::Head, Phase::Backward, Phase::Optimizer];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Head => "head_and_loss",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        }
    }
}

/// Bytes a device allocator holds: handed out to tensors, and reserved from the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocated {
    pub in_use: u64,
    pub reserved: u64,
}

/// Reads the allocator of a device (passed as `&dyn Any`: the trainer is generic over the
/// backend, the runtime that can answer is not); `None` where there is none to read.
pub type MemoryProbe = fn(&dyn Any) -> Option<Allocated>;

/// Wall time per phase of one optimizer step, summed over its micro-batches, and the
/// allocator at the end of each phase (the largest over micro-batches) where a probe was given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    pub time: [Duration; 4],
    pub memory: [Option<Allocated>; 4],
}

impl Phases {
    pub fn time(&self, phase: Phase) -> Duration {
        self.time[phase as usize]
    }

    pub fn memory(&self, phase: Phase) -> Option<Allocated> {
        self.memory[phase as usize]
    }

    /// The larger of each phase's memory, the sum of each phase's time.
    pub(crate) fn add(&mut self, other: &Phases) {
        for phase in Phase::ALL {
            let p = phase as usize;
            self.time[p] += other.time[p];
            self.memory[p] = max_allocated(self.memory[p], other.memory[p]);
        }
    }
}

fn max_allocated(a: Option<Allocated>, b: Option<Allocated>) -> Option<Allocated> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Allocated {
            in_use: a.in_use.max(b.in_use),
            reserved: a.reserved.max(b.reserved),
        }),
        (a, b) => a.or(b),
    }
}

/// Attributes elapsed device time (and memory, with a probe) to phases when `phases` is given;
/// does nothing otherwise.
pub(crate) struct Clock<'a, B: Backend> {
    phases: Option<&'a mut Phases>,
    probe: Option<MemoryProbe>,
    device: B::Device,
    last: Instant,
}

impl<'a, B: Backend> Clock<'a, B> {
    pub(crate) fn start(phases: Option<&'a mut Phases>, probe: Option<MemoryProbe>, device: &B::Device) -> Self {
        if phases.is_some() {
            // Work queued before this point belongs to no phase of ours.
            let _ = B::sync(device);
        }
        Self {
            phases,
            probe,
            device: device.clone(),
            last: Instant::now(),
        }
    }

    /// Adds the time since the last lap to `phase`, and what the allocator holds now.
    pub(crate) fn lap(&mut self, phase: Phase) {
        if let Some(phases) = self.phases.as_deref_mut() {
            let _ = B::sync(&self.device);
            let now = Instant::now();
            let p = phase as usize;
            phases.time[p] += now - self.last;
            if let Some(probe) = self.probe {
                phases.memory[p] = max_allocated(phases.memory[p], probe(&self.device as &dyn Any));
            }
            self.last = now;
        }
    }
}
