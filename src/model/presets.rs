//! Model shapes with random weights, for benchmarks and tests that need a real model's
//! size without its files.

use super::config::ModelConfig;
use super::params::ParamSpec;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// `(name, HF config.json)` of each preset.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "smollm2-135m",
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":8192,
            "rope_theta":100000,"rms_norm_eps":1e-5,"tie_word_embeddings":true}"#,
    ),
    (
        "qwen2.5-0.5b",
        r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
            "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"max_position_embeddings":32768,
            "rope_theta":1000000,"rms_norm_eps":1e-6,"tie_word_embeddings":true}"#,
    ),
    (
        "gpt2",
        r#"{"architectures":["GPT2LMHeadModel"],"vocab_size":50257,"n_embd":768,"n_layer":12,"n_head":12,
            "n_positions":1024,"activation_function":"gelu_new","layer_norm_epsilon":1e-5}"#,
    ),
    (
        "tiny-llama",
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":2048,"hidden_size":128,"intermediate_size":352,
            "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":1024,
            "rope_theta":10000,"rms_norm_eps":1e-5,"tie_word_embeddings":true}"#,
    ),
];

pub fn preset(name: &str) -> Result<ModelConfig> {
    let (_, json) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        Error::Usage(format!(
            "unknown preset `{name}` (one of: {})",
            PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        ))
    })?;
    ModelConfig::from_hf_json(json)
}

/// Random weights like a fresh HF model: N(0, 0.02) matrices, unit norm weights, zero biases.
pub fn random_init(seed: u64) -> impl FnMut(&ParamSpec) -> Result<Vec<f32>> {
    let mut rng = Rng::new(seed);
    move |spec: &ParamSpec| {
        let n = spec.numel();
        let is_norm = spec.shape.len() == 1 && (spec.name.contains("norm") || spec.name.contains("ln"));
        Ok(if spec.shape.len() >= 2 {
            (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
        } else if is_norm && spec.name.ends_with(".weight") {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        })
    }
}
