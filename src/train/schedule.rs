//! Learning-rate schedules with linear warm-up, exactly as transformers defines them
//! (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` with `num_cycles = 0.5`): a multiplier of the base
//! learning rate as a function of the scheduler's step, which is the number of optimizer
//! steps already taken (0 for the first step).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScheduleKind {
    /// `base_lr` after warm-up.
    Constant,
    /// Linear decay from `base_lr` at the end of warm-up to 0 at `total`.
    #[default]
    Linear,
    /// Half a cosine from `base_lr` at the end of warm-up to 0 at `total`.
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            _ => Err(Error::Usage(format!("unknown schedule `{s}` (constant, linear or cosine)"))),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        })
    }
}

/// A schedule over a run of `total` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    /// Warm-up steps: the multiplier rises linearly from 0 (step 0) towards 1.
    pub warmup: u64,
    /// Optimizer steps in the whole run (transformers' `num_training_steps`).
    pub total: u64,
}

impl Schedule {
    /// The multiplier of `base_lr` at scheduler step `step` (0-based: the learning rate
    /// of the `step + 1`-th optimizer step), transformers' `lr_lambda(current_step)`.
    pub fn factor(&self, step: u64) -> f64 {
        let (s, w, n) = (step as f64, self.warmup as f64, self.total as f64);
        if step < self.warmup {
            return s / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (0f64).max((n - s) / (n - w).max(1.0)),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (n - w).max(1.0);
                (0f64).max(0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos()))
            }
        }
    }

    /// The learning rate at scheduler step `step` (see [`Schedule::factor`]).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: u64, total: u64) -> Schedule {
        Schedule { kind, base_lr: 1.0, warmup, total }
    }

    #[test]
    fn parse_and_print_round_trip() {
        for k in [ScheduleKind::Constant, ScheduleKind::Linear, ScheduleKind::Cosine] {
            assert_eq!(k.to_string().parse::<ScheduleKind>().unwrap(), k);
        }
        assert!("exp".parse::<ScheduleKind>().is_err());
    }

    /// The formulas of transformers/optimization.py written out at awkward steps.
    #[test]
    fn values_match_transformers() {
        use std::f64::consts::PI;
        for kind in [ScheduleKind::Constant, ScheduleKind::Linear, ScheduleKind::Cosine] {
            // Warm-up 0: the first step gets the full rate.
            assert_eq!(sched(kind, 0, 10).factor(0), 1.0, "{kind}");
            // Warm-up 1: the first step gets 0, the second the full rate.
            assert_eq!(sched(kind, 1, 10).factor(0), 0.0, "{kind}");
            assert_eq!(sched(kind, 1, 10).factor(1), 1.0, "{kind}");
            // Warm-up 4: 0, 1/4, 2/4, 3/4, then 1 at the end of warm-up.
            for s in 0..4 {
                assert_eq!(sched(kind, 4, 10).factor(s), s as f64 / 4.0, "{kind} {s}");
            }
            assert_eq!(sched(kind, 4, 10).factor(4), 1.0, "{kind}");
        }
        let c = sched(ScheduleKind::Constant, 3, 10);
        assert_eq!(c.factor(9), 1.0);
        assert_eq!(c.factor(50), 1.0);

        // Linear: (total - s) / (total - warmup), never below 0.
        let l = sched(ScheduleKind::Linear, 2, 10);
        assert_eq!(l.factor(5), 5.0 / 8.0);
        assert_eq!(l.factor(9), 1.0 / 8.0); // the last step of the run
        assert_eq!(l.factor(10), 0.0);
        assert_eq!(l.factor(12), 0.0);
        // Warm-up as long as the run: max(1, total - warmup) in the denominator.
        let l = sched(ScheduleKind::Linear, 10, 10);
        assert_eq!(l.factor(9), 0.9);
        assert_eq!(l.factor(10), 0.0);

        // Cosine: 0.5 (1 + cos(pi * progress)), progress = (s - w) / max(1, total - w).
        let k = sched(ScheduleKind::Cosine, 3, 10);
        for s in 3..=12 {
            let p = (s as f64 - 3.0) / 7.0;
            let want = (0.5 * (1.0 + (PI * p).cos())).max(0.0);
            assert_eq!(k.factor(s), want, "cosine step {s}");
        }
        assert!((k.factor(9) - 0.5 * (1.0 + (PI * 6.0 / 7.0).cos())).abs() < 1e-15);
        assert!(k.factor(10).abs() < 1e-15);
        // One-step run without warm-up: the only step gets the full rate.
        assert_eq!(sched(ScheduleKind::Cosine, 0, 1).factor(0), 1.0);
        assert_eq!(sched(ScheduleKind::Linear, 0, 1).factor(0), 1.0);
        // Base rate scales.
        let s = Schedule { kind: ScheduleKind::Linear, base_lr: 3e-4, warmup: 0, total: 4 };
        assert_eq!(s.lr(2), 3e-4 * 0.5);
    }
}
