//! Learning-rate schedules with the curves of transformers' `get_*_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

/// The schedule's shape after warm-up (`lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear decay to 0 at the last step (the seed's).
    Linear,
    /// Half a cosine from the peak to 0.
    Cosine,
    /// The peak from the first step: warm-up settings are ignored, as transformers'
    /// `get_constant_schedule` ignores them.
    Constant,
    /// Linear warm-up, then flat (`get_constant_schedule_with_warmup`).
    ConstantWithWarmup,
}

/// Learning rate at each optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The learning rate used for optimizer step `step` (0-based), i.e. transformers'
    /// `LambdaLR` factor at `step` times the peak.
    pub fn lr(&self, step: usize) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        let factor = if self.kind == ScheduleKind::Constant {
            1.0
        } else if step < self.warmup_steps {
            s / w.max(1.0)
        } else {
            let progress = (s - w) / (t - w).max(1.0);
            match self.kind {
                ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
                ScheduleKind::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
                ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
            }
        };
        self.peak_lr * factor
    }

    /// Warm-up steps from `warmup_ratio` as transformers rounds them (`ceil(ratio · total)`).
    pub fn warmup_from_ratio(ratio: f64, total_steps: usize) -> usize {
        (ratio * total_steps as f64).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            peak_lr: 5e-4,
            warmup_steps: 2,
            total_steps: 10,
        }
    }

    #[test]
    fn linear_with_warmup_matches_transformers() {
        // transformers: get_linear_schedule_with_warmup(opt, 2, 10), lr 5e-4, steps 0..10.
        let expected = [
            0.0, 2.5e-4, 5e-4, 4.375e-4, 3.75e-4, 3.125e-4, 2.5e-4, 1.875e-4, 1.25e-4, 6.25e-5,
        ];
        for (step, want) in expected.iter().enumerate() {
            assert!(
                (schedule(ScheduleKind::Linear).lr(step) - want).abs() < 1e-12,
                "step {step}"
            );
        }
    }

    #[test]
    fn cosine_reaches_half_the_peak_midway_and_zero_at_the_end() {
        let s = schedule(ScheduleKind::Cosine);
        assert!((s.lr(6) - 2.5e-4).abs() < 1e-12);
        assert!(s.lr(10).abs() < 1e-12);
    }

    #[test]
    fn constant_ignores_warmup_as_transformers_does() {
        // transformers: get_scheduler("constant", opt, num_warmup_steps=2) is flat from step 0.
        let s = schedule(ScheduleKind::Constant);
        assert_eq!((s.lr(0), s.lr(1), s.lr(9)), (5e-4, 5e-4, 5e-4));
    }

    #[test]
    fn constant_with_warmup_stays_at_the_peak_after_warmup() {
        let s = schedule(ScheduleKind::ConstantWithWarmup);
        assert_eq!((s.lr(0), s.lr(1), s.lr(2), s.lr(9)), (0.0, 2.5e-4, 5e-4, 5e-4));
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        assert_eq!(Schedule::warmup_from_ratio(0.03, 100), 3);
        assert_eq!(Schedule::warmup_from_ratio(0.1, 15), 2);
    }
}
