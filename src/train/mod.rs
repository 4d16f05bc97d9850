//! Training: loss weighting over the accumulated batch, the optimizer step, and the loop.

pub mod batch;
pub mod checkpoint;
pub mod run;
pub mod schedule;
mod trainer;

pub use crate::ops::adamw::AdamW;
pub use batch::{Example, ExampleScore, LossMode, MicroBatch};
pub use checkpoint::{Checkpoint, CheckpointError, Difference};
pub use run::{Length, Run, RunConfig, RunState, StepReport};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{StepStats, TrainConfig, Trainer};
