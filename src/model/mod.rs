//! A decoder-only transformer on the GPU: its configuration, its parameters (named as in
//! the Hugging Face checkpoint), one forward + backward pass over a micro-batch, and
//! incremental decoding with a KV cache for generation.

pub mod arch;
pub mod config;
pub mod generate;
pub mod params;
mod pass;
pub mod presets;
mod workspace;

pub use arch::ModelP;
pub use config::{Arch, ModelConfig};
pub use generate::{generate, Decoder, GenerateConfig, Generation, Sampler, Sampling, StopReason};
pub use params::{ParamSpec, ParamStore, Pid};
pub use pass::Head;
pub use workspace::{Inputs, Workspace};

use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::rope::RopeTable;

/// Largest position the RoPE table covers (memory: 2 * P * D/2 floats).
const MAX_ROPE_POSITIONS: usize = 32768;

pub struct Model {
    pub cfg: ModelConfig,
    pub params: ParamStore,
    pub tree: ModelP,
    pub(crate) rope: Option<RopeTable>,
}

impl Model {
    /// Build the model, taking each parameter's values from `tensor(spec)` (a loader
    /// checks names and shapes and converts dtypes).
    pub fn new(gpu: &Gpu, cfg: ModelConfig, tensor: impl FnMut(&ParamSpec) -> Result<Vec<f32>>) -> Result<Model> {
        let (specs, tree) = arch::build(&cfg);
        let params = ParamStore::new(gpu, specs, tensor)?;
        let rope = if cfg.inv_freq.is_empty() {
            None
        } else {
            Some(RopeTable::new(gpu, &cfg.inv_freq, cfg.max_pos.min(MAX_ROPE_POSITIONS))?)
        };
        Ok(Model { cfg, params, tree, rope })
    }

    /// The longest sequence the model can take (learned positions or the RoPE table).
    pub fn max_seq(&self) -> usize {
        self.cfg.max_pos.min(MAX_ROPE_POSITIONS)
    }
}
