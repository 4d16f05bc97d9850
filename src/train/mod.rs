//! Training: loss weighting over the accumulated batch, the optimizer step, and the loop.

pub mod batch;
mod trainer;

pub use crate::ops::adamw::AdamW;
pub use batch::{Example, ExampleScore, LossMode, MicroBatch};
pub use trainer::{StepStats, TrainConfig, Trainer};
