//! What a parameter is, apart from where it lives: its Hugging Face name, shape and
//! whether it trains. Host-side (no GPU), so the loaders can map file tensors onto specs.

#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
    /// Read only by kernels without a compact operand (GPT-2's learned positions, which
    /// the f32 gather adds to the token rows): never kept compact, whatever the base.
    pub f32_only: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether a base may keep this parameter compact (GGUF blocks, f16/bf16): a frozen
    /// matrix that a matmul's weight operand or the token gather reads. The loaders, the
    /// parameter store and the memory estimate all ask this one question.
    pub fn may_be_compact(&self) -> bool {
        !self.trainable && !self.f32_only && self.shape.len() == 2
    }

    /// Weight decay goes to matrices only, as the HF Trainer does (not biases, not norms).
    pub fn decay(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// Parameter id: an index into `ParamStore::specs`.
pub type Pid = usize;
