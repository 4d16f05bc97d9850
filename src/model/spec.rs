//! What a parameter is, apart from where it lives: its Hugging Face name, shape and
//! whether it trains. Host-side (no GPU), so the loaders can map file tensors onto specs.

#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Weight decay goes to matrices only, as the HF Trainer does (not biases, not norms).
    pub fn decay(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// Parameter id: an index into `ParamStore::specs`.
pub type Pid = usize;
