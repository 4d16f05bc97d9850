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
    // The 2026 small-model families (issue 9), as their config.json files give them.
    // HuggingFaceTB/SmolLM2-360M(-Instruct).
    (
        "smollm2-360m",
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":49152,"hidden_size":960,"intermediate_size":2560,
            "num_hidden_layers":32,"num_attention_heads":15,"num_key_value_heads":5,"max_position_embeddings":8192,
            "rope_theta":100000,"rms_norm_eps":1e-5,"tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2}"#,
    ),
    // Qwen/Qwen2.5-1.5B-Instruct (q/k/v biases come with the architecture).
    (
        "qwen2.5-1.5b",
        r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":151936,"hidden_size":1536,"intermediate_size":8960,
            "num_hidden_layers":28,"num_attention_heads":12,"num_key_value_heads":2,"max_position_embeddings":32768,
            "rope_theta":1000000,"rms_norm_eps":1e-6,"tie_word_embeddings":true,"use_sliding_window":false,
            "bos_token_id":151643,"eos_token_id":151645}"#,
    ),
    // meta-llama/Llama-3.2-1B(-Instruct): llama3 RoPE scaling, tied embeddings, head_dim 64.
    (
        "llama3.2-1b",
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,
            "max_position_embeddings":131072,"rope_theta":500000.0,"rms_norm_eps":1e-5,"tie_word_embeddings":true,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
                "original_max_position_embeddings":8192,"rope_type":"llama3"},
            "attention_bias":false,"mlp_bias":false,"bos_token_id":128000,"eos_token_id":128001}"#,
    ),
    // Qwen/Qwen3-0.6B: head_dim 128 with 16 heads over a hidden size of 1024.
    (
        "qwen3-0.6b",
        r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":151936,"hidden_size":1024,"intermediate_size":3072,
            "num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,
            "max_position_embeddings":40960,"rope_theta":1000000,"rms_norm_eps":1e-6,"tie_word_embeddings":true,
            "attention_bias":false,"use_sliding_window":false,"bos_token_id":151643,"eos_token_id":151645}"#,
    ),
    // Qwen/Qwen3-1.7B.
    (
        "qwen3-1.7b",
        r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":151936,"hidden_size":2048,"intermediate_size":6144,
            "num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,
            "max_position_embeddings":40960,"rope_theta":1000000,"rms_norm_eps":1e-6,"tie_word_embeddings":true,
            "attention_bias":false,"use_sliding_window":false,"bos_token_id":151643,"eos_token_id":151645}"#,
    ),
    // google/gemma-3-270m(-it), config.json as published (its old-style RoPE keys): every
    // 6th layer global (sliding_window_pattern 6), head_dim 256 over a hidden size of 640.
    (
        "gemma3-270m",
        r#"{"architectures":["Gemma3ForCausalLM"],"model_type":"gemma3_text","vocab_size":262144,"hidden_size":640,
            "intermediate_size":2048,"num_hidden_layers":18,"num_attention_heads":4,"num_key_value_heads":1,
            "head_dim":256,"max_position_embeddings":32768,"query_pre_attn_scalar":256,"sliding_window":512,
            "sliding_window_pattern":6,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,"rope_scaling":null,
            "rms_norm_eps":1e-6,"hidden_activation":"gelu_pytorch_tanh","final_logit_softcapping":null,
            "attn_logit_softcapping":null,"tie_word_embeddings":true,"bos_token_id":2,"eos_token_id":[1,106]}"#,
    ),
    // google/gemma-3-1b(-it).
    (
        "gemma3-1b",
        r#"{"architectures":["Gemma3ForCausalLM"],"model_type":"gemma3_text","vocab_size":262144,"hidden_size":1152,
            "intermediate_size":6912,"num_hidden_layers":26,"num_attention_heads":4,"num_key_value_heads":1,
            "head_dim":256,"max_position_embeddings":32768,"query_pre_attn_scalar":256,"sliding_window":512,
            "sliding_window_pattern":6,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,"rope_scaling":null,
            "rms_norm_eps":1e-6,"hidden_activation":"gelu_pytorch_tanh","final_logit_softcapping":null,
            "attn_logit_softcapping":null,"tie_word_embeddings":true,"bos_token_id":2,"eos_token_id":[1,106]}"#,
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

/// Random weights like a fresh HF model: N(0, 0.02) matrices, unit norm weights, zero biases
/// (for Gemma 3, whose norms scale by 1 + w, that is a scale of 2: harmless for a bench).
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
