//! The engine's view of a model, read from a Hugging Face `config.json`.

use serde_json::Value;

use crate::error::{Error, Result};

/// The largest head size the attention kernel (shaders/attention.wgsl) takes: it keeps a
/// head's row in registers as at most 64 vec4s (Gemma 3's head_dim 256).
pub const MAX_HEAD_SIZE: usize = 256;

/// HF's `1 / theta^(arange(0, d, 2) / d)`, each step in f32 as torch computes it, so the
/// angles (and hence the model's outputs) match the checkpoint's training bit for bit.
pub fn default_inv_freq(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LlamaForCausalLM: SmolLM2, TinyLlama, Llama 3.2. RMSNorm, RoPE, GQA, SwiGLU.
    Llama,
    /// Qwen2ForCausalLM: Llama's shape with biases on q, k and v.
    Qwen2,
    /// GPT2LMHeadModel: LayerNorm, learned positions, GELU MLP, fused c_attn, Conv1D layout.
    Gpt2,
    /// Qwen3ForCausalLM: Llama's shape (no q/k/v bias by default) with an RMSNorm over each
    /// head of q and of k (weights of size D) before RoPE; `head_dim` set on its own.
    Qwen3,
    /// Gemma3ForCausalLM (text): the embedding scaled by sqrt(C), every RMSNorm as
    /// x * rstd * (1 + w), per-head q/k norms, norms after attention and after the MLP as
    /// well as before, GeGLU (tanh GELU), sliding-window attention on the layers the
    /// config marks (with their own RoPE base), `query_pre_attn_scalar`, and the final
    /// logits soft-capped when the config says so. See `Gemma`.
    Gemma3,
}

/// What Gemma 3 adds to the shared decoder shape (`ModelConfig::gemma`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma {
    /// Per layer: true for a sliding-window (local) layer, false for a global one
    /// (`layer_types`, or `sliding_window_pattern`: every pattern-th layer is global).
    pub sliding: Vec<bool>,
    /// Keys a local layer's query sees: itself and the `window - 1` before it
    /// (transformers' `kv_idx > q_idx - sliding_window`).
    pub window: usize,
    /// RoPE inverse frequencies (D/2) of the local layers (`rope_local_base_freq`); the
    /// global layers use `ModelConfig::inv_freq` (`rope_theta`).
    pub local_inv_freq: Vec<f32>,
    /// The attention scores' scale, query_pre_attn_scalar^-0.5 (not 1/sqrt(D)).
    pub attn_scale: f32,
    /// `final_logit_softcapping`: logits = cap * tanh(logits / cap) when set.
    pub final_softcap: Option<f32>,
    /// The embedding's scale: sqrt(C) rounded to f32, as transformers' buffer
    /// `torch.tensor(hidden_size ** 0.5)` (a float32 tensor) holds it.
    pub embed_scale: f32,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    /// V
    pub vocab: usize,
    /// C
    pub hidden: usize,
    pub layers: usize,
    /// H
    pub heads: usize,
    /// Hk
    pub kv_heads: usize,
    /// D
    pub head_dim: usize,
    /// F
    pub ffn: usize,
    pub max_pos: usize,
    pub norm_eps: f32,
    pub tied: bool,
    /// Biases on q, k, v (Qwen2, or Llama's `attention_bias`); o_proj gets one only in Llama.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (Qwen3's `q_norm`, `k_norm`, (D)).
    pub qk_norm: bool,
    /// Gemma 3's settings; None for every other family.
    pub gemma: Option<Gemma>,
    /// RoPE inverse frequencies (D/2), after any `rope_scaling`; empty for GPT-2.
    pub inv_freq: Vec<f32>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name).filter(|x| !x.is_null()).ok_or_else(|| Error::Config(format!("config.json has no `{name}`")))
}

fn usize_field(v: &Value, name: &str) -> Result<usize> {
    let x = field(v, name)?;
    x.as_u64()
        .filter(|&n| n > 0 && n < (1 << 31))
        .map(|n| n as usize)
        .ok_or_else(|| Error::Config(format!("config.json `{name}` must be a positive integer, found {x}")))
}

fn opt_usize(v: &Value, name: &str) -> Result<Option<usize>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => usize_field(v, name).map(Some),
    }
}

fn f64_field(v: &Value, name: &str, default: f64) -> Result<f64> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_f64().ok_or_else(|| Error::Config(format!("config.json `{name}` must be a number, found {x}"))),
    }
}

fn bool_field(v: &Value, name: &str, default: bool) -> Result<bool> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_bool().ok_or_else(|| Error::Config(format!("config.json `{name}` must be true or false"))),
    }
}

fn token_ids(v: &Value, name: &str) -> Vec<u32> {
    match v.get(name) {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    pub fn from_hf_json(text: &str) -> Result<ModelConfig> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json is not JSON: {e}")))?;
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .or_else(|| v.get("model_type").and_then(|m| m.as_str()).map(str::to_string))
            .ok_or_else(|| Error::Config("config.json has neither `architectures` nor `model_type`".into()))?;
        let arch = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" | "MistralForCausalLM" | "mistral" => Arch::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "GPT2LMHeadModel" | "gpt2" => Arch::Gpt2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            "Gemma3ForCausalLM" | "gemma3_text" => Arch::Gemma3,
            other => {
                return Err(Error::Config(format!(
                    "architecture `{other}` is not supported (supported: LlamaForCausalLM, Qwen2ForCausalLM, \
                     Qwen3ForCausalLM, Gemma3ForCausalLM, GPT2LMHeadModel)"
                )))
            }
        };
        let cfg = match arch {
            Arch::Gpt2 => {
                let hidden = usize_field(&v, "n_embd")?;
                let heads = usize_field(&v, "n_head")?;
                let act = v.get("activation_function").and_then(|a| a.as_str()).unwrap_or("gelu_new");
                if act != "gelu_new" && act != "gelu_pytorch_tanh" {
                    return Err(Error::Config(format!(
                        "config.json `activation_function` is `{act}`; only GPT-2's tanh GELU (gelu_new) is supported"
                    )));
                }
                ModelConfig {
                    arch,
                    vocab: usize_field(&v, "vocab_size")?,
                    hidden,
                    layers: usize_field(&v, "n_layer")?,
                    heads,
                    kv_heads: heads,
                    head_dim: hidden / heads,
                    ffn: opt_usize(&v, "n_inner")?.unwrap_or(4 * hidden),
                    max_pos: usize_field(&v, "n_positions")?,
                    norm_eps: f64_field(&v, "layer_norm_epsilon", 1e-5)? as f32,
                    tied: true,
                    qkv_bias: true,
                    o_bias: true,
                    mlp_bias: true,
                    qk_norm: false,
                    gemma: None,
                    inv_freq: Vec::new(),
                    eos_token_ids: token_ids(&v, "eos_token_id"),
                    bos_token_id: token_ids(&v, "bos_token_id").first().copied(),
                }
            }
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
                let hidden = usize_field(&v, "hidden_size")?;
                let heads = usize_field(&v, "num_attention_heads")?;
                let kv_heads = opt_usize(&v, "num_key_value_heads")?.unwrap_or(heads);
                // Qwen3Config's own default head_dim is 128, not hidden / heads.
                let default_head_dim = if arch == Arch::Qwen3 { 128 } else { hidden / heads };
                let head_dim = opt_usize(&v, "head_dim")?.unwrap_or(default_head_dim);
                let qwen = arch == Arch::Qwen2;
                if arch != Arch::Llama && bool_field(&v, "use_sliding_window", false)? {
                    return Err(Error::Config("config.json `use_sliding_window` = true is not supported".into()));
                }
                // transformers 5 nests RoPE settings in `rope_parameters`; older configs
                // keep `rope_theta` and `rope_scaling` at the top level.
                let rope_params = v.get("rope_parameters").filter(|r| r.is_object());
                let theta = match rope_params.and_then(|r| r.get("rope_theta")).filter(|t| !t.is_null()) {
                    Some(_) => f64_field(rope_params.unwrap(), "rope_theta", 10000.0)?,
                    None => f64_field(&v, "rope_theta", 10000.0)?,
                } as f32;
                let mut inv_freq = default_inv_freq(theta, head_dim);
                if let Some(scaling) = rope_params.or_else(|| v.get("rope_scaling").filter(|s| !s.is_null())) {
                    apply_rope_scaling(&mut inv_freq, scaling)?;
                }
                let attention_bias = bool_field(&v, "attention_bias", false)?;
                ModelConfig {
                    arch,
                    vocab: usize_field(&v, "vocab_size")?,
                    hidden,
                    layers: usize_field(&v, "num_hidden_layers")?,
                    heads,
                    kv_heads,
                    head_dim,
                    ffn: usize_field(&v, "intermediate_size")?,
                    max_pos: usize_field(&v, "max_position_embeddings")?,
                    norm_eps: f64_field(&v, "rms_norm_eps", 1e-6)? as f32,
                    tied: bool_field(&v, "tie_word_embeddings", false)?,
                    // Qwen2 always has q/k/v biases; Qwen3 follows `attention_bias` for q, k, v
                    // and o alike, as Qwen3Attention does; Llama also has `mlp_bias`.
                    qkv_bias: qwen || attention_bias,
                    o_bias: !qwen && attention_bias,
                    mlp_bias: arch == Arch::Llama && bool_field(&v, "mlp_bias", false)?,
                    qk_norm: arch == Arch::Qwen3,
                    gemma: None,
                    inv_freq,
                    eos_token_ids: token_ids(&v, "eos_token_id"),
                    bos_token_id: token_ids(&v, "bos_token_id").first().copied(),
                }
            }
            Arch::Gemma3 => gemma3_from_json(&v)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        if self.arch == Arch::Gpt2 && !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.hidden, self.heads
            )));
        }
        // The attention kernel reads a head's row 4 lanes at a time.
        if !self.head_dim.is_multiple_of(4) {
            return Err(Error::Config(format!(
                "head size {} is not supported (a multiple of 4, at most {})",
                self.head_dim, MAX_HEAD_SIZE
            )));
        }
        if let Some(g) = &self.gemma {
            if g.sliding.len() != self.layers || g.window == 0 || g.local_inv_freq.len() != self.inv_freq.len() {
                return Err(Error::Config(format!(
                    "Gemma 3 settings do not fit the model: {} layer types for {} layers, sliding window {}",
                    g.sliding.len(),
                    self.layers,
                    g.window
                )));
            }
        }
        Ok(())
    }

    /// Whether the kernels can run this model (checked when a model is built, not when a
    /// config is parsed, so that the memory of a shape can be estimated before the kernels
    /// take it): the attention kernel keeps a head's row in registers, at most
    /// MAX_HEAD_SIZE wide.
    pub fn check_kernels(&self) -> Result<()> {
        if self.head_dim > MAX_HEAD_SIZE {
            return Err(Error::Config(format!(
                "head size {} is not supported (a multiple of 4, at most {})",
                self.head_dim, MAX_HEAD_SIZE
            )));
        }
        Ok(())
    }

    /// Whether `layer` is a sliding-window (local) layer of a Gemma 3 model.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.gemma.as_ref().is_some_and(|g| g.sliding.get(layer).copied().unwrap_or(false))
    }

    /// Query projection width H*D, and key/value width Hk*D.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Gemma3ForCausalLM's config.json: transformers 5's form (`rope_parameters` per layer
/// type) or the published checkpoints' (`rope_theta`, `rope_local_base_freq`); `layer_types`
/// or `sliding_window_pattern`. What the engine cannot run (RoPE scaling, attention-logit
/// soft-capping, bidirectional attention, another activation) is refused by name.
fn gemma3_from_json(v: &Value) -> Result<ModelConfig> {
    let hidden = usize_field(v, "hidden_size")?;
    let heads = opt_usize(v, "num_attention_heads")?.unwrap_or(8);
    let kv_heads = opt_usize(v, "num_key_value_heads")?.unwrap_or(heads);
    // Gemma3TextConfig's defaults where config.json leaves a field out.
    let head_dim = opt_usize(v, "head_dim")?.unwrap_or(256);
    let layers = usize_field(v, "num_hidden_layers")?;
    let act = v.get("hidden_activation").and_then(|a| a.as_str()).unwrap_or("gelu_pytorch_tanh");
    if act != "gelu_pytorch_tanh" {
        return Err(Error::Config(format!(
            "config.json `hidden_activation` is `{act}`; Gemma 3 runs with gelu_pytorch_tanh only"
        )));
    }
    if f64_field(v, "attn_logit_softcapping", 0.0)? != 0.0 {
        return Err(Error::Config(
            "config.json `attn_logit_softcapping` is set: soft-capped attention scores are not supported".into(),
        ));
    }
    if bool_field(v, "use_bidirectional_attention", false)? {
        return Err(Error::Config("config.json `use_bidirectional_attention` = true is not supported".into()));
    }
    if bool_field(v, "attention_bias", false)? {
        return Err(Error::Config("config.json `attention_bias` = true is not supported for Gemma 3".into()));
    }
    let sliding: Vec<bool> = match v.get("layer_types").filter(|t| !t.is_null()) {
        Some(Value::Array(types)) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(Error::Config(format!("config.json `layer_types` has an unknown layer type {t}"))),
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(Error::Config(format!("config.json `layer_types` must be a list, found {other}"))),
        None => {
            let pattern = match opt_usize(v, "sliding_window_pattern")? {
                Some(p) => p,
                None => opt_usize(v, "_sliding_window_pattern")?.unwrap_or(6),
            };
            (0..layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    if sliding.len() != layers {
        return Err(Error::Config(format!(
            "config.json `layer_types` lists {} layers for num_hidden_layers = {layers}",
            sliding.len()
        )));
    }
    // RoPE: transformers 5 keeps one parameter set per layer type; older configs give
    // the global base as `rope_theta` and the local one as `rope_local_base_freq`.
    let rope_params = v.get("rope_parameters").filter(|r| r.is_object());
    let theta_of = |kind: &str, old: &str, default: f64| -> Result<f32> {
        let p = rope_params.and_then(|r| r.get(kind)).filter(|p| p.is_object());
        if let Some(p) = p {
            let t = p.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
            if t != "default" {
                return Err(Error::Config(format!("Gemma 3 `{kind}` RoPE type `{t}` is not supported")));
            }
            return Ok(f64_field(p, "rope_theta", default)? as f32);
        }
        Ok(f64_field(v, old, default)? as f32)
    };
    let global = theta_of("full_attention", "rope_theta", 1_000_000.0)?;
    let local = theta_of("sliding_attention", "rope_local_base_freq", 10_000.0)?;
    if v.get("rope_scaling").is_some_and(|s| !s.is_null()) {
        return Err(Error::Config("config.json `rope_scaling` is not supported for Gemma 3".into()));
    }
    let scalar = f64_field(v, "query_pre_attn_scalar", 256.0)?;
    if !(scalar.is_finite() && scalar > 0.0) {
        return Err(Error::Config(format!("config.json `query_pre_attn_scalar` must be positive, found {scalar}")));
    }
    let cap = match v.get("final_logit_softcapping") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let c = f64_field(v, "final_logit_softcapping", 0.0)?;
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::Config(format!(
                    "config.json `final_logit_softcapping` must be positive, found {c}"
                )));
            }
            Some(c as f32)
        }
    };
    let gemma = Gemma {
        sliding,
        window: opt_usize(v, "sliding_window")?.unwrap_or(4096),
        local_inv_freq: default_inv_freq(local, head_dim),
        attn_scale: scalar.powf(-0.5) as f32,
        final_softcap: cap,
        embed_scale: (hidden as f64).sqrt() as f32,
    };
    Ok(ModelConfig {
        arch: Arch::Gemma3,
        vocab: opt_usize(v, "vocab_size")?.unwrap_or(262_208),
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        ffn: usize_field(v, "intermediate_size")?,
        max_pos: opt_usize(v, "max_position_embeddings")?.unwrap_or(131_072),
        norm_eps: f64_field(v, "rms_norm_eps", 1e-6)? as f32,
        tied: bool_field(v, "tie_word_embeddings", true)?,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: true,
        gemma: Some(gemma),
        inv_freq: default_inv_freq(global, head_dim),
        eos_token_ids: token_ids(v, "eos_token_id"),
        bos_token_id: token_ids(v, "bos_token_id").first().copied(),
    })
}

/// `rope_scaling` of Llama 3.x (`rope_type: llama3`), as transformers'
/// `_compute_llama3_parameters`; linear scaling divides every frequency.
fn apply_rope_scaling(inv_freq: &mut [f32], s: &Value) -> Result<()> {
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
    let factor = f64_field(s, "factor", 1.0)?;
    match kind {
        "default" => {}
        "linear" => inv_freq.iter_mut().for_each(|f| *f = (*f as f64 / factor) as f32),
        "llama3" => {
            let low = f64_field(s, "low_freq_factor", 1.0)?;
            let high = f64_field(s, "high_freq_factor", 4.0)?;
            let old_ctx = f64_field(s, "original_max_position_embeddings", 8192.0)?;
            let low_wavelen = old_ctx / low;
            let high_wavelen = old_ctx / high;
            for f in inv_freq.iter_mut() {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                *f = if wavelen > low_wavelen {
                    (freq / factor) as f32
                } else if wavelen < high_wavelen {
                    *f
                } else {
                    let smooth = (old_ctx / wavelen - low) / (high - low);
                    ((1.0 - smooth) * freq / factor + smooth * freq) as f32
                };
            }
        }
        other => return Err(Error::Config(format!("rope_scaling type `{other}` is not supported"))),
    }
    Ok(())
}
