//! GPU memory a training configuration needs, computed before anything is allocated,
//! from the same parameter layout and workspace sizes the engine then allocates.

use super::arch;
use super::config::ModelConfig;
use super::lora::{self, LoraConfig};
use super::params::{compact_words, ParamSpec};
use super::workspace::{Workspace, WorkspaceOpts};
use crate::error::Result;
use crate::load::compact::CompactFormat;
use crate::ops::matmul::RowProduct;

/// Bytes by kind. Parameters are counted as their arenas lay them out (each tensor padded
/// to 256 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEstimate {
    /// Weights that do not train (the whole base model under LoRA), compact ones included.
    pub frozen_weights: u64,
    /// Of `frozen_weights`, the matrices kept compact (GGUF blocks, f16/bf16; their compact
    /// arenas' bytes).
    pub compact_weights: u64,
    /// Weights that train (the adapters under LoRA, everything in full fine-tuning).
    pub trainable_weights: u64,
    /// Their gradients and AdamW's two moments (3x the trainable weights).
    pub grads_and_moments: u64,
    /// The workspace of one micro-batch in training's layout (`WorkspaceOpts::default()`:
    /// each block's input, one block's activations recomputed in the backward, one head
    /// chunk's logits) with every row carrying loss (the all-tokens worst case), LoRA's u
    /// buffers included: exactly the bytes `Workspace::with_opts` allocates.
    pub activations: u64,
    /// Of `activations`, what the adapters add.
    pub lora_activations: u64,
    /// RoPE's cos/sin table.
    pub tables: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.frozen_weights + self.trainable_weights + self.grads_and_moments + self.activations + self.tables
    }
}

/// "738 MiB (frozen weights 513, trainable weights 9.3, ...)": the total and each kind, in MiB.
impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{:.0} MiB (frozen weights {:.0}, trainable weights {:.1}, their gradients and AdamW moments {:.1}, \
             activations {:.0} of which LoRA {:.1}, tables {:.1})",
            mib(self.total()),
            mib(self.frozen_weights),
            mib(self.trainable_weights),
            mib(self.grads_and_moments),
            mib(self.activations),
            mib(self.lora_activations),
            mib(self.tables)
        )
    }
}

/// What training `cfg` (with `lora`, or fully when None) needs for micro-batches of
/// `micro_batch` sequences of `seq` tokens. Accumulated batches add nothing: the
/// workspace is sized for one micro-batch and reused.
pub fn estimate(
    cfg: &ModelConfig,
    lora: Option<&LoraConfig>,
    micro_batch: usize,
    seq: usize,
) -> Result<MemoryEstimate> {
    estimate_with(cfg, lora, micro_batch, seq, WorkspaceOpts::default())
}

/// `estimate` for a workspace in the layout `opts` (e.g. without recompute).
pub fn estimate_with(
    cfg: &ModelConfig,
    lora: Option<&LoraConfig>,
    micro_batch: usize,
    seq: usize,
    opts: WorkspaceOpts,
) -> Result<MemoryEstimate> {
    estimate_compact(cfg, lora, micro_batch, seq, opts, |_| None)
}

/// `estimate_with` for a base whose frozen matrices named by `compact_of` stay compact in
/// that format, as `ParamStore::new_compact` lays them out (the same `compact_of` gives the
/// same bytes; a shape a format cannot hold is the same error).
pub fn estimate_compact(
    cfg: &ModelConfig,
    lora: Option<&LoraConfig>,
    micro_batch: usize,
    seq: usize,
    opts: WorkspaceOpts,
    compact_of: impl Fn(&ParamSpec) -> Option<CompactFormat>,
) -> Result<MemoryEstimate> {
    let (specs, shape, products) = specs_and_lora_shape(cfg, lora)?;
    let mut e = MemoryEstimate::default();
    for s in &specs {
        if let Some(f) = compact_of(s) {
            let bytes = compact_words(s, f)? as u64 * 4;
            e.frozen_weights += bytes;
            e.compact_weights += bytes;
            continue;
        }
        let bytes = s.numel().next_multiple_of(64) as u64 * 4;
        if s.trainable {
            e.trainable_weights += bytes;
            e.grads_and_moments += 3 * bytes;
        } else {
            e.frozen_weights += bytes;
        }
    }
    let rows = micro_batch * seq;
    e.activations = Workspace::bytes(cfg, shape, &products, rows, rows, opts);
    e.lora_activations = shape.map_or(0, |s| s.bytes(rows));
    if !cfg.inv_freq.is_empty() {
        // Gemma 3 has a second table for its local layers (`Model::rope_local`).
        let tables = if cfg.gemma.is_some() { 2 } else { 1 };
        e.tables = tables * 4 * (2 * cfg.max_pos.min(super::MAX_ROPE_POSITIONS) * cfg.inv_freq.len()) as u64;
    }
    Ok(e)
}

/// The parameters of `cfg` with `lora`'s adapters attached (`all-linear` expanded), as
/// `Model::build` lays them out, and the adapters' workspace shape.
fn specs_and_lora_shape(
    cfg: &ModelConfig,
    lora: Option<&LoraConfig>,
) -> Result<(Vec<ParamSpec>, Option<lora::LoraShape>, Vec<RowProduct>)> {
    let (mut specs, mut tree) = arch::build(cfg);
    let lora = lora.map(|l| l.expanded(cfg.arch));
    let shape = match &lora {
        Some(l) => {
            lora::attach(l, &mut specs, &mut tree)?;
            lora::shape(l, &tree)
        }
        None => None,
    };
    let products = lora::row_products(&specs, &tree);
    Ok((specs, shape, products))
}

/// The parameter specs `estimate` counts: `cfg`'s, with `lora`'s adapters attached (the
/// base frozen). What a `compact_of` for `estimate_compact` and
/// `ParamStore::new_compact` is asked about.
pub fn param_specs(cfg: &ModelConfig, lora: Option<&LoraConfig>) -> Result<Vec<ParamSpec>> {
    Ok(specs_and_lora_shape(cfg, lora)?.0)
}

/// The largest single activation buffer of a micro-batch of `rows` tokens with
/// `logit_rows` rows through the LM head at once: what must fit one storage binding.
pub fn largest_buffer(cfg: &ModelConfig, rows: usize, logit_rows: usize) -> u64 {
    [rows * cfg.ffn, rows * 3 * cfg.hidden, logit_rows * cfg.vocab].into_iter().max().unwrap_or(0) as u64 * 4
}
