//! A decoder-only transformer on the GPU: its configuration, its parameters (named as in
//! the Hugging Face checkpoint), one forward + backward pass over a micro-batch, and
//! incremental decoding with a KV cache for generation.
//!
//! The configuration (`config`) and the parameter specs (`spec`) are host-side; the rest
//! needs the `gpu` feature.

#[cfg(feature = "gpu")]
pub mod arch;
pub mod config;
#[cfg(feature = "gpu")]
pub mod generate;
#[cfg(feature = "gpu")]
pub mod lora;
#[cfg(feature = "gpu")]
pub mod memory;
#[cfg(feature = "gpu")]
pub mod params;
#[cfg(feature = "gpu")]
mod pass;
#[cfg(feature = "gpu")]
pub mod presets;
pub mod spec;
#[cfg(feature = "gpu")]
mod workspace;

#[cfg(feature = "gpu")]
pub use arch::ModelP;
pub use config::{Arch, ModelConfig};
#[cfg(feature = "gpu")]
pub use generate::{generate, Decoder, GenerateConfig, Generation, Sampler, Sampling, StopReason};
#[cfg(feature = "gpu")]
pub use lora::{LoraConfig, LoraShape};
#[cfg(feature = "gpu")]
pub use params::ParamStore;
#[cfg(feature = "gpu")]
pub use pass::{Head, LoraIo};
pub use spec::{ParamSpec, Pid};
#[cfg(feature = "gpu")]
pub use workspace::{
    head_k_ranges, head_rows, Inputs, LayerActs, LoraActs, PostNormActs, QkNormActs, Workspace, WorkspaceOpts,
    HEAD_CHUNK,
};

#[cfg(feature = "gpu")]
use crate::error::Result;
#[cfg(feature = "gpu")]
use crate::gpu::Gpu;
#[cfg(feature = "gpu")]
use crate::load::compact::CompactFormat;
#[cfg(feature = "gpu")]
use crate::ops::rope::RopeTable;
#[cfg(feature = "gpu")]
use params::ParamInit;

/// Largest position the RoPE table covers (memory: 2 * P * D/2 floats).
#[cfg(feature = "gpu")]
const MAX_ROPE_POSITIONS: usize = 32768;

#[cfg(feature = "gpu")]
pub struct Model {
    pub cfg: ModelConfig,
    pub params: ParamStore,
    pub tree: ModelP,
    pub(crate) rope: Option<RopeTable>,
    /// Gemma 3's local layers' table (`Gemma::local_inv_freq`); None for other models.
    pub(crate) rope_local: Option<RopeTable>,
    /// The LoRA configuration when the model carries adapters (its base is then frozen).
    pub lora: Option<LoraConfig>,
}

#[cfg(feature = "gpu")]
impl Model {
    /// Build the model, taking each parameter's values from `tensor(spec)` (a loader
    /// checks names and shapes and converts dtypes).
    pub fn new(gpu: &Gpu, cfg: ModelConfig, tensor: impl FnMut(&ParamSpec) -> Result<Vec<f32>>) -> Result<Model> {
        Model::build(gpu, cfg, None, tensor)
    }

    /// Build the model with LoRA adapters (when `lora` is given): every base parameter
    /// from `tensor` and frozen (no gradient or optimizer storage), the adapters trainable
    /// and initialized as PEFT does (so the model starts as the base model).
    pub fn build(
        gpu: &Gpu,
        cfg: ModelConfig,
        lora: Option<&LoraConfig>,
        mut tensor: impl FnMut(&ParamSpec) -> Result<Vec<f32>>,
    ) -> Result<Model> {
        Model::build_compact(gpu, cfg, lora, |_| None, |spec| tensor(spec).map(ParamInit::F32))
    }

    /// `build`, with the frozen base matrices for which `compact_of` names a format kept
    /// compact on the GPU (`tensor` gives their `ParamInit::Compact`; see
    /// `ParamStore::new_compact`): the matmuls, the embedding gather and a tied LM head read
    /// them through the in-kernel dequantizers.
    pub fn build_compact(
        gpu: &Gpu,
        cfg: ModelConfig,
        lora: Option<&LoraConfig>,
        compact_of: impl Fn(&ParamSpec) -> Option<CompactFormat>,
        mut tensor: impl FnMut(&ParamSpec) -> Result<ParamInit>,
    ) -> Result<Model> {
        cfg.check_kernels()?;
        let (mut specs, mut tree) = arch::build(&cfg);
        // PEFT's `all-linear`: every linear layer of this architecture but the head.
        let resolved = lora.map(|l| l.expanded(cfg.arch));
        let lora = resolved.as_ref();
        let init = match lora {
            Some(l) => lora::attach(l, &mut specs, &mut tree)?,
            None => Default::default(),
        };
        // The adapters (trainable) and f32-only tables are never compact, whatever
        // `compact_of` says.
        let compact = |s: &ParamSpec| if s.may_be_compact() { compact_of(s) } else { None };
        let params = ParamStore::new_compact(gpu, specs, compact, |spec| match init.get(&spec.name) {
            Some(v) => Ok(ParamInit::F32(v.clone())),
            None => tensor(spec),
        })?;
        let rope = if cfg.inv_freq.is_empty() {
            None
        } else {
            Some(RopeTable::new(gpu, &cfg.inv_freq, cfg.max_pos.min(MAX_ROPE_POSITIONS))?)
        };
        let rope_local = match &cfg.gemma {
            Some(g) => Some(RopeTable::new(gpu, &g.local_inv_freq, cfg.max_pos.min(MAX_ROPE_POSITIONS))?),
            None => None,
        };
        Ok(Model { cfg, params, tree, rope, rope_local, lora: lora.cloned() })
    }

    /// The longest sequence the model can take (learned positions or the RoPE table).
    pub fn max_seq(&self) -> usize {
        self.cfg.max_pos.min(MAX_ROPE_POSITIONS)
    }

    /// What the workspace needs for this model's adapters; None without LoRA.
    pub fn lora_shape(&self) -> Option<LoraShape> {
        self.lora.as_ref().and_then(|l| lora::shape(l, &self.tree))
    }

    /// A workspace for micro-batches of up to `rows` tokens and `n` loss rows, with the
    /// adapters' buffers when the model has any, that holds the logits of every loss row
    /// (`Head::Logits`); see `workspace_with` for training's smaller layout.
    pub fn workspace(&self, gpu: &Gpu, rows: usize, n: usize) -> Result<Workspace> {
        self.workspace_with(gpu, rows, n, WorkspaceOpts::logits())
    }

    /// `workspace` with the layout `opts` (`WorkspaceOpts::default()`: training's).
    pub fn workspace_with(&self, gpu: &Gpu, rows: usize, n: usize, opts: WorkspaceOpts) -> Result<Workspace> {
        let products = lora::row_products(&self.params.specs, &self.tree);
        Workspace::with_opts(gpu, &self.cfg, self.lora_shape(), &products, rows, n, opts)
    }

    /// Every LoRA parameter (A, B of each adapted layer, forward order) with its module path.
    pub fn lora_params(&self) -> Vec<(String, Pid, Pid)> {
        lora::linears(&self.tree)
            .into_iter()
            .filter_map(|l| l.lora.as_ref().map(|a| (lora::module_name(&self.params.specs, l), a.a, a.b)))
            .collect()
    }
}
