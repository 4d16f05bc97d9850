//! What the session reports: plain serializable structs, the same for the command line
//! and the page (which receives them through serde-wasm-bindgen).

use serde::{Deserialize, Serialize};

use super::settings::{Method, Settings};
use crate::model::memory::MemoryEstimate;
use crate::tokenize::Message;

/// Architecture facts and what can be set for this model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub arch: String,
    pub source: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub max_seq: usize,
    pub tied_embeddings: bool,
    pub params: usize,
    pub trainable: usize,
    pub method: Method,
    /// The LoRA the model was loaded with (targets expanded).
    pub lora: Option<LoraInfo>,
    /// The linear layers LoRA can target in this architecture (PEFT's module names).
    pub lora_targets: Vec<String>,
    pub tokenizer: bool,
    pub chat_template: bool,
    pub eos_token_ids: Vec<u32>,
    /// How the weights sit on the GPU: "f32", or the frozen base's compact formats with
    /// their tensor counts ("Q4_1 x 210, Q8_0 x 1, f32 x 61").
    pub base_precision: String,
    /// Bytes the parameters take on the GPU: the weights (compact or f32) and the
    /// trainable ones' gradients and moments.
    pub weight_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoraInfo {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub rslora: bool,
    pub targets: Vec<String>,
}

/// The memory a run needs and whether it fits the adapter.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryInfo {
    /// Bytes by kind (flattened into this object's keys).
    #[serde(flatten)]
    pub estimate: MemoryEstimate,
    pub total: u64,
    /// Micro-batch and sequence length the estimate is for.
    pub micro_batch: usize,
    pub seq: usize,
    pub max_binding_bytes: u64,
    pub fits: bool,
    /// Why it does not fit, when it does not.
    pub error: Option<String>,
}

/// The run as configured and where it stands.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub total_steps: u64,
    pub steps_per_epoch: usize,
    pub epochs: f64,
    pub train_examples: usize,
    pub valid_examples: usize,
    pub micro_batch: usize,
    pub done: u64,
    pub finished: bool,
    /// The model must be loaded again for the settings to apply (LoRA on/off, rank,
    /// alpha, dropout, targets).
    pub reload_needed: bool,
    pub settings: Settings,
    pub memory: Option<MemoryInfo>,
    /// What `check` says: None when the run can start.
    pub problem: Option<String>,
}

/// One token of the mask preview.
#[derive(Clone, Debug, Serialize)]
pub struct PreviewToken {
    pub id: u32,
    pub text: Option<String>,
    pub trained: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    pub origin: String,
    pub index: usize,
    pub count: usize,
    pub prompt: Option<String>,
    pub tokens: Vec<PreviewToken>,
}

/// The validation loss.
#[derive(Clone, Debug, Serialize)]
pub struct ValidLoss {
    pub loss: f64,
    pub examples: usize,
    /// "validation" or "train" (no held-out set: the training set).
    pub split: &'static str,
    pub step: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExactItem {
    /// The user's words (last user message, or the prompt).
    pub prompt: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExactMatch {
    pub score: f64,
    pub correct: usize,
    pub total: usize,
    pub items: Vec<ExactItem>,
    pub step: u64,
}

/// How to generate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    /// Put a string prompt through the chat template as a user turn.
    pub chat: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { max_new_tokens: 128, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, chat: false }
    }
}

/// A prompt: plain text, or chat messages rendered by the chat template.
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

#[derive(Clone, Debug, Serialize)]
pub struct Generated {
    pub text: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub stop: String,
}
