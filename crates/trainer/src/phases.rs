//! Where a step's time goes, measured on request: each phase boundary waits for the device,
//! which would slow normal training, so only benchmarks ask for it.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

/// Wall time per phase of one optimizer step, summed over its micro-batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    /// Forward through the decoder layers (without autodiff when checkpointing).
    pub forward: Duration,
    /// LM head and loss, forward and backward.
    pub head: Duration,
    /// Backward through the decoder layers (recompute included when checkpointing).
    pub backward: Duration,
    /// Gradient norm, clipping and the optimizer update.
    pub optimizer: Duration,
}

/// Attributes elapsed device time to phases when `phases` is given; does nothing otherwise.
pub(crate) struct Clock<'a, B: Backend> {
    phases: Option<&'a mut Phases>,
    device: B::Device,
    last: Instant,
}

impl<'a, B: Backend> Clock<'a, B> {
    pub(crate) fn start(phases: Option<&'a mut Phases>, device: &B::Device) -> Self {
        if phases.is_some() {
            // Work queued before this point belongs to no phase of ours.
            let _ = B::sync(device);
        }
        Self {
            phases,
            device: device.clone(),
            last: Instant::now(),
        }
    }

    /// Adds the time since the last lap to the phase `field` picks.
    pub(crate) fn lap(&mut self, field: fn(&mut Phases) -> &mut Duration) {
        if let Some(phases) = self.phases.as_deref_mut() {
            let _ = B::sync(&self.device);
            let now = Instant::now();
            *field(phases) += now - self.last;
            self.last = now;
        }
    }
}
