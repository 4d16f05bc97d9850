//! Training: loss weighting over the accumulated batch, the optimizer step, and the loop.
//!
//! Batch planning and the schedule are host-side; the trainer, the run and checkpoints
//! need the `gpu` feature.

pub mod batch;
#[cfg(feature = "gpu")]
pub mod checkpoint;
#[cfg(feature = "gpu")]
pub mod run;
pub mod schedule;
#[cfg(feature = "gpu")]
mod trainer;

#[cfg(feature = "gpu")]
pub use crate::ops::adamw::AdamW;
pub use batch::{Example, ExampleScore, LossMode, MicroBatch};
#[cfg(feature = "gpu")]
pub use checkpoint::{Checkpoint, CheckpointError, Difference};
#[cfg(feature = "gpu")]
pub use run::{Length, Run, RunConfig, RunState, StepReport};
pub use schedule::{Schedule, ScheduleKind};
#[cfg(feature = "gpu")]
pub use trainer::{StepStats, TrainConfig, Trainer};
