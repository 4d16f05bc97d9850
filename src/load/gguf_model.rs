//! A GGUF file as an engine [`Model`]: the configuration from `{arch}.*` metadata, every
//! parameter from llama.cpp's tensor names mapped onto the Hugging Face names the engine
//! uses (dequantized to f32), and the tokenizer / chat metadata as plain Rust types.
//!
//! Two layout differences from the Hugging Face checkpoints are undone here:
//! - llama.cpp's converter permutes the rows of Llama-family `q_proj` / `k_proj` (weights
//!   and biases) from HF's rotate-half RoPE layout to ggml's interleaved one (per head, row
//!   `j * D/2 + i` moves to `2 * i + j`); Qwen2 and GPT-2 are not permuted.
//! - GPT-2's Conv1D weights (in, out) were transposed to (out, in); they are transposed back.

use super::base::Base;
use super::compact::{CompactFormat, CompactTensor};
use super::gguf::{Gguf, TensorInfo, Value};
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub use super::upload::model_from_gguf_file;
#[cfg(feature = "gpu")]
pub use super::upload::{model_from_gguf_bytes, model_from_gguf_bytes_lora};
use crate::error::{Error, Result};
use crate::model::config::default_inv_freq;
use crate::model::{Arch, ModelConfig, ParamSpec};

/// What the tokenizer and chat side need from a GGUF file's `tokenizer.*` metadata. Fields
/// the file lacks are empty / `None`.
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE), `llama` (SentencePiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer (`smollm`, `qwen2`, `llama-bpe`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte), one per token, or empty.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece), one per token, or empty.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`: BPE merges, each "left right".
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn), where the file has one.
    pub eot_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

/// The metadata of a GGUF model besides its weights.
#[derive(Clone, Debug)]
pub struct GgufInfo {
    pub file: String,
    pub version: u32,
    /// `general.architecture` (`llama`, `qwen2`, `gpt2`).
    pub architecture: String,
    /// `general.name`, where present.
    pub name: Option<String>,
    pub tokenizer: GgufTokenizer,
    /// `tokenizer.chat_template` (a Jinja template), where present.
    pub chat_template: Option<String>,
    /// How many tensors of each ggml type the file holds, e.g. [("Q4_1", 210), ("F32", 61)].
    pub tensor_types: Vec<(String, usize)>,
}

fn meta_err(g: &Gguf, msg: String) -> Error {
    Error::Config(format!("{}: {msg}", g.file))
}

fn opt_u32(g: &Gguf, key: &str) -> Result<Option<u32>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| meta_err(g, format!("metadata `{key}` must be a non-negative integer, found {v:?}"))),
    }
}

fn opt_bool(g: &Gguf, key: &str) -> Result<Option<bool>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| meta_err(g, format!("metadata `{key}` must be a bool"))),
    }
}

fn opt_str(g: &Gguf, key: &str) -> Result<Option<String>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| meta_err(g, format!("metadata `{key}` must be a string, found {}", v.type_name()))),
    }
}

/// A positive count that fits the engine (`{arch}.block_count` etc.).
fn count(g: &Gguf, key: &str) -> Result<Option<usize>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Array(_)) => Err(meta_err(
            g,
            format!("metadata `{key}` is a per-layer array; only one value for all layers is supported"),
        )),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0 && n < (1 << 31))
            .map(|n| Some(n as usize))
            .ok_or_else(|| meta_err(g, format!("metadata `{key}` must be a positive integer, found {v:?}"))),
    }
}

fn req_count(g: &Gguf, key: &str) -> Result<usize> {
    count(g, key)?.ok_or_else(|| meta_err(g, format!("metadata `{key}` is missing")))
}

fn opt_f64(g: &Gguf, key: &str) -> Result<Option<f64>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| meta_err(g, format!("metadata `{key}` must be a number, found {}", v.type_name()))),
    }
}

fn req_f64(g: &Gguf, key: &str) -> Result<f64> {
    opt_f64(g, key)?.ok_or_else(|| meta_err(g, format!("metadata `{key}` is missing")))
}

fn arch_of(g: &Gguf) -> Result<(Arch, String)> {
    let name = opt_str(g, "general.architecture")?
        .ok_or_else(|| meta_err(g, "metadata `general.architecture` is missing".into()))?;
    let arch = match name.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "gpt2" => Arch::Gpt2,
        "qwen3" => Arch::Qwen3,
        "gemma3" => Arch::Gemma3,
        other => {
            return Err(meta_err(
                g,
                format!("architecture `{other}` is not supported (supported: llama, qwen2, qwen3, gemma3, gpt2)"),
            ))
        }
    };
    Ok((arch, name))
}

fn tensor_dims<'g>(g: &'g Gguf, name: &str) -> Option<&'g TensorInfo> {
    g.tensor(name)
}

/// The engine's configuration from a GGUF file's metadata (and, for the vocabulary size
/// and which biases exist, its tensor infos).
pub fn config_from_gguf(g: &Gguf) -> Result<ModelConfig> {
    let (arch, a) = arch_of(g)?;
    let k = |s: &str| format!("{a}.{s}");
    let hidden = req_count(g, &k("embedding_length"))?;
    let layers = req_count(g, &k("block_count"))?;
    let heads = req_count(g, &k("attention.head_count"))?;
    let kv_heads = count(g, &k("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = count(g, &k("attention.key_length"))?.unwrap_or(hidden / heads);
    if let Some(vd) = count(g, &k("attention.value_length"))? {
        if vd != head_dim {
            return Err(meta_err(g, format!("value head size {vd} differs from key head size {head_dim}")));
        }
    }
    let ffn = req_count(g, &k("feed_forward_length"))?;
    let embd = tensor_dims(g, "token_embd.weight")
        .ok_or_else(|| Error::Weights(format!("{}: tensor `token_embd.weight` is missing", g.file)))?;
    if embd.dims.len() != 2 || embd.dims[0] != hidden as u64 {
        return Err(Error::Weights(format!(
            "{}: `token_embd.weight` has dims {:?}, expected [{hidden}, vocab]",
            g.file, embd.dims
        )));
    }
    let vocab = embd.dims[1] as usize;
    if let Some(tokens) = g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
        if tokens.len() > vocab {
            return Err(meta_err(
                g,
                format!("the tokenizer has {} tokens but `token_embd.weight` only {vocab} rows", tokens.len()),
            ));
        }
    }
    let has = |t: &str| g.tensor(t).is_some();
    let bos = opt_u32(g, "tokenizer.ggml.bos_token_id")?;
    let mut eos: Vec<u32> = opt_u32(g, "tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(eot) = opt_u32(g, "tokenizer.ggml.eot_token_id")? {
        if !eos.contains(&eot) {
            eos.push(eot);
        }
    }
    let cfg = match arch {
        Arch::Gpt2 => {
            let pos = tensor_dims(g, "position_embd.weight")
                .ok_or_else(|| Error::Weights(format!("{}: tensor `position_embd.weight` is missing", g.file)))?;
            let max_pos = count(g, &k("context_length"))?.unwrap_or(pos.dims.get(1).copied().unwrap_or(0) as usize);
            ModelConfig {
                arch,
                vocab,
                hidden,
                layers,
                heads,
                kv_heads: heads,
                head_dim: hidden / heads,
                ffn,
                max_pos,
                norm_eps: req_f64(g, &k("attention.layer_norm_epsilon"))? as f32,
                tied: true,
                qkv_bias: true,
                o_bias: true,
                mlp_bias: true,
                qk_norm: false,
                gemma: None,
                inv_freq: Vec::new(),
                eos_token_ids: eos,
                bos_token_id: bos,
            }
        }
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            if let Some(rd) = count(g, &k("rope.dimension_count"))? {
                if rd != head_dim {
                    return Err(meta_err(
                        g,
                        format!("RoPE over {rd} of {head_dim} head dimensions (partial rotary) is not supported"),
                    ));
                }
            }
            let theta = opt_f64(g, &k("rope.freq_base"))?.unwrap_or(10000.0) as f32;
            let mut inv_freq = default_inv_freq(theta, head_dim);
            rope_scaling(g, &a, &mut inv_freq)?;
            let qwen = arch == Arch::Qwen2;
            ModelConfig {
                arch,
                vocab,
                hidden,
                layers,
                heads,
                kv_heads,
                head_dim,
                ffn,
                max_pos: req_count(g, &k("context_length"))?,
                norm_eps: req_f64(g, &k("attention.layer_norm_rms_epsilon"))? as f32,
                tied: !has("output.weight"),
                qkv_bias: qwen || has("blk.0.attn_q.bias"),
                o_bias: !qwen && has("blk.0.attn_output.bias"),
                mlp_bias: arch == Arch::Llama && has("blk.0.ffn_gate.bias"),
                // llama.cpp's qwen3 always carries them; their absence is caught by name
                // when the tensors are mapped.
                qk_norm: arch == Arch::Qwen3,
                gemma: None,
                inv_freq,
                eos_token_ids: eos,
                bos_token_id: bos,
            }
        }
        Arch::Gemma3 => gemma3_config(g, &a, [vocab, hidden, layers, heads, kv_heads, head_dim, ffn], eos, bos)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Gemma 3 from llama.cpp's `gemma3.*` metadata. What convert_hf_to_gguf.py leaves out,
/// llama.cpp fixes for the family, and so does this: every 6th layer global (the others
/// sliding), the local RoPE base 10000 (unless `rope.freq_base_swa` says otherwise) and
/// query_pre_attn_scalar = head_dim (the converter asserts it for these sizes). Tied
/// unless the file has `output.weight`.
fn gemma3_config(g: &Gguf, a: &str, dims: [usize; 7], eos: Vec<u32>, bos: Option<u32>) -> Result<ModelConfig> {
    use crate::model::config::Gemma;
    let [vocab, hidden, layers, heads, kv_heads, head_dim, ffn] = dims;
    let k = |s: &str| format!("{a}.{s}");
    if let Some(rd) = count(g, &k("rope.dimension_count"))? {
        if rd != head_dim {
            return Err(meta_err(g, format!("RoPE over {rd} of {head_dim} head dimensions is not supported")));
        }
    }
    if opt_f64(g, &k("attn_logit_softcapping"))?.is_some_and(|c| c != 0.0) {
        return Err(meta_err(g, "attention-logit soft-capping is not supported".into()));
    }
    let global = opt_f64(g, &k("rope.freq_base"))?.unwrap_or(1_000_000.0) as f32;
    let local = opt_f64(g, &k("rope.freq_base_swa"))?.unwrap_or(10_000.0) as f32;
    let window = req_count(g, &k("attention.sliding_window"))?;
    let cap = match opt_f64(g, &k("final_logit_softcapping"))? {
        Some(c) if c.is_finite() && c > 0.0 => Some(c as f32),
        Some(c) => return Err(meta_err(g, format!("final_logit_softcapping must be positive, found {c}"))),
        None => None,
    };
    Ok(ModelConfig {
        arch: Arch::Gemma3,
        vocab,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        ffn,
        max_pos: req_count(g, &k("context_length"))?,
        norm_eps: req_f64(g, &k("attention.layer_norm_rms_epsilon"))? as f32,
        tied: g.tensor("output.weight").is_none(),
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: true,
        gemma: Some(Gemma {
            sliding: (0..layers).map(|i| (i + 1) % 6 != 0).collect(),
            window,
            local_inv_freq: default_inv_freq(local, head_dim),
            attn_scale: (head_dim as f64).powf(-0.5) as f32,
            final_softcap: cap,
            embed_scale: (hidden as f64).sqrt() as f32,
        }),
        inv_freq: default_inv_freq(global, head_dim),
        eos_token_ids: eos,
        bos_token_id: bos,
    })
}

/// `{arch}.rope.scaling.*` (none / linear) and llama.cpp's `rope_freqs.weight` (Llama 3.x
/// frequency factors: each frequency is divided by its factor).
fn rope_scaling(g: &Gguf, a: &str, inv_freq: &mut [f32]) -> Result<()> {
    let kind = opt_str(g, &format!("{a}.rope.scaling.type"))?;
    let factor = match opt_f64(g, &format!("{a}.rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => opt_f64(g, &format!("{a}.rope.scale_linear"))?,
    };
    // No type with a factor: the older `rope.scale_linear` key, linear scaling.
    let linear = match (kind.as_deref(), factor) {
        (Some("none"), _) | (None, None) => None,
        (Some("linear") | None, Some(f)) if f > 0.0 && f.is_finite() => Some(f),
        (Some("linear") | None, f) => {
            return Err(meta_err(g, format!("linear RoPE scaling needs a positive factor, found {f:?}")))
        }
        (Some(other), _) => {
            return Err(meta_err(g, format!("RoPE scaling `{other}` is not supported (none and linear are)")))
        }
    };
    if let Some(f) = linear {
        inv_freq.iter_mut().for_each(|x| *x = (*x as f64 / f) as f32);
    }
    if let Some(t) = g.tensor("rope_freqs.weight") {
        let factors = g.dequantize(t)?;
        if factors.len() != inv_freq.len() {
            return Err(Error::Weights(format!(
                "{}: `rope_freqs.weight` has {} values, expected {} (head size / 2)",
                g.file,
                factors.len(),
                inv_freq.len()
            )));
        }
        for (f, s) in inv_freq.iter_mut().zip(factors) {
            *f /= s;
        }
    }
    Ok(())
}

/// How a GGUF tensor becomes an engine parameter (and, inverted, how the GGUF export
/// writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fix {
    None,
    /// Undo llama.cpp's RoPE row permutation for this many heads.
    Unpermute(usize),
    /// (out, in) back to GPT-2's Conv1D (in, out).
    Transpose,
    /// Gemma's norm weights: convert_hf_to_gguf.py stores w + 1 (llama.cpp then scales by
    /// the stored value), the engine keeps transformers' w (and scales by 1 + w); loading
    /// subtracts 1, as transformers' own GGUF loader does, and export adds it back.
    PlusOne,
}

/// The GGUF tensor name for an engine (Hugging Face) parameter name, and how to fix it up.
pub(crate) fn gguf_name(cfg: &ModelConfig, hf: &str) -> Option<(String, Fix)> {
    let (stem, suffix) = hf.rsplit_once('.')?; // suffix: weight | bias
    let llama_rope = cfg.arch == Arch::Llama;
    let top = match (cfg.arch, stem) {
        (Arch::Gpt2, "transformer.wte") => Some("token_embd"),
        (Arch::Gpt2, "transformer.ln_f") => Some("output_norm"),
        (Arch::Gemma3, "model.norm") => return Some(("output_norm.weight".into(), Fix::PlusOne)),
        (Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3, "model.embed_tokens") => Some("token_embd"),
        (Arch::Llama | Arch::Qwen2 | Arch::Qwen3, "model.norm") => Some("output_norm"),
        (Arch::Gpt2, "transformer.wpe") => Some("position_embd"),
        (_, "lm_head") => Some("output"),
        _ => None,
    };
    if let Some(t) = top {
        return Some((format!("{t}.{suffix}"), Fix::None));
    }
    let prefix = match cfg.arch {
        Arch::Gpt2 => "transformer.h.",
        _ => "model.layers.",
    };
    let rest = stem.strip_prefix(prefix)?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (name, fix) = match (cfg.arch, part) {
        (Arch::Gpt2, "ln_1") => ("attn_norm", Fix::None),
        (Arch::Gpt2, "attn.c_attn") => ("attn_qkv", Fix::Transpose),
        (Arch::Gpt2, "attn.c_proj") => ("attn_output", Fix::Transpose),
        (Arch::Gpt2, "ln_2") => ("ffn_norm", Fix::None),
        (Arch::Gpt2, "mlp.c_fc") => ("ffn_up", Fix::Transpose),
        (Arch::Gpt2, "mlp.c_proj") => ("ffn_down", Fix::Transpose),
        (Arch::Gpt2, _) => return None,
        // Gemma 3: its four norms per block and the q/k norms, all stored as w + 1.
        (Arch::Gemma3, "input_layernorm") => ("attn_norm", Fix::PlusOne),
        (Arch::Gemma3, "post_attention_layernorm") => ("post_attention_norm", Fix::PlusOne),
        (Arch::Gemma3, "pre_feedforward_layernorm") => ("ffn_norm", Fix::PlusOne),
        (Arch::Gemma3, "post_feedforward_layernorm") => ("post_ffw_norm", Fix::PlusOne),
        (Arch::Gemma3, "self_attn.q_norm") => ("attn_q_norm", Fix::PlusOne),
        (Arch::Gemma3, "self_attn.k_norm") => ("attn_k_norm", Fix::PlusOne),
        (_, "input_layernorm") => ("attn_norm", Fix::None),
        (_, "self_attn.q_proj") => ("attn_q", if llama_rope { Fix::Unpermute(cfg.heads) } else { Fix::None }),
        (_, "self_attn.k_proj") => ("attn_k", if llama_rope { Fix::Unpermute(cfg.kv_heads) } else { Fix::None }),
        (_, "self_attn.v_proj") => ("attn_v", Fix::None),
        (_, "self_attn.o_proj") => ("attn_output", Fix::None),
        // Qwen3: llama.cpp's names; the (D) weights are not permuted (NeoX-style RoPE).
        (Arch::Qwen3, "self_attn.q_norm") => ("attn_q_norm", Fix::None),
        (Arch::Qwen3, "self_attn.k_norm") => ("attn_k_norm", Fix::None),
        (_, "post_attention_layernorm") => ("ffn_norm", Fix::None),
        (_, "mlp.gate_proj") => ("ffn_gate", Fix::None),
        (_, "mlp.up_proj") => ("ffn_up", Fix::None),
        (_, "mlp.down_proj") => ("ffn_down", Fix::None),
        _ => return None,
    };
    // Biases are vectors: a transpose does not apply to them.
    let fix = if suffix == "bias" && fix == Fix::Transpose { Fix::None } else { fix };
    Some((format!("blk.{layer}.{name}.{suffix}"), fix))
}

/// Undo `convert_hf_to_gguf.py`'s `LlamaModel.permute`: it reshapes the rows as
/// (heads, 2, D/2), swaps the last two axes to (heads, D/2, 2), so stored row
/// `h*D + 2*i + j` is HF row `h*D + j*D/2 + i`.
pub fn unpermute_rope_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// `convert_hf_to_gguf.py`'s `LlamaModel.permute` (the inverse of [`unpermute_rope_rows`]):
/// HF row `h*D + j*D/2 + i` is stored as row `h*D + 2*i + j`.
pub fn permute_rope_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = (h * d + 2 * i + j) * cols;
                let src = (h * d + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// (rows, cols) row-major to (cols, rows).
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

/// The GGUF tensor behind a frozen matrix `spec` and its format, when `base` keeps it
/// compact (a transposed GPT-2 weight stays f32: its blocks run along the wrong axis).
pub fn compact_format_for(g: &Gguf, cfg: &ModelConfig, spec: &ParamSpec, base: Base) -> Option<CompactFormat> {
    if !spec.may_be_compact() {
        return None;
    }
    let (name, fix) = gguf_name(cfg, &spec.name)?;
    if fix == Fix::Transpose {
        return None;
    }
    let file = CompactFormat::from_name(g.tensor(&name)?.ty.name);
    base.format_for(spec.shape[0], spec.shape[1], file)
}

/// Engine parameter `spec` from the GGUF file in compact `format` (`compact_format_for`):
/// the file's blocks as they are (rows un-permuted where llama.cpp reordered them) when
/// it has that format, else its values quantized.
pub fn compact_tensor_for(
    g: &Gguf,
    cfg: &ModelConfig,
    spec: &ParamSpec,
    format: CompactFormat,
) -> Result<CompactTensor> {
    let (name, fix) = gguf_name(cfg, &spec.name)
        .ok_or_else(|| Error::Weights(format!("{}: no GGUF tensor name for `{}`", g.file, spec.name)))?;
    let info = g.tensor(&name).ok_or_else(|| Error::Weights(format!("{}: tensor `{name}` is missing", g.file)))?;
    let file = CompactFormat::from_name(info.ty.name);
    let (rows, cols) = (spec.shape[0], spec.shape[1]);
    let raw = || {
        let t = CompactTensor::from_gguf_tensor(info, g.tensor_bytes(info))?;
        if (t.rows, t.cols) != (rows, cols) {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` is {} x {}, but `{}` needs {rows} x {cols}",
                g.file, t.rows, t.cols, spec.name
            )));
        }
        Ok(match fix {
            Fix::Unpermute(heads) => {
                // Where each HF row sits in the file: the f32 path's permutation of row indices.
                let idx: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                let order: Vec<usize> = unpermute_rope_rows(&idx, heads, 1).iter().map(|&r| r as usize).collect();
                t.permute_rows(&order)
            }
            _ => t,
        })
    };
    Base::tensor(&spec.name, format, (rows, cols), file, raw, || tensor_for(g, cfg, spec))
}

/// The values of engine parameter `spec` from the GGUF file: found under its llama.cpp
/// name, shape-checked, dequantized, and un-permuted or transposed where needed.
pub fn tensor_for(g: &Gguf, cfg: &ModelConfig, spec: &ParamSpec) -> Result<Vec<f32>> {
    let (name, fix) = gguf_name(cfg, &spec.name).ok_or_else(|| {
        Error::Weights(format!("{}: no GGUF tensor name is known for parameter `{}`", g.file, spec.name))
    })?;
    let t = g.tensor(&name).ok_or_else(|| {
        Error::Weights(format!("{}: tensor `{name}` (for `{}`, shape {:?}) is missing", g.file, spec.name, spec.shape))
    })?;
    // ggml dims are innermost first; GPT-2's transposed weights are stored (out, in).
    let want: Vec<u64> = match fix {
        Fix::Transpose => spec.shape.iter().map(|&d| d as u64).collect(),
        _ => spec.shape.iter().rev().map(|&d| d as u64).collect(),
    };
    let mut got = t.dims.clone();
    while got.len() > want.len() && got.last() == Some(&1) {
        got.pop();
    }
    if got != want {
        return Err(Error::Weights(format!(
            "{}: tensor `{name}` has dims {:?} (innermost first), but `{}` of shape {:?} needs {want:?}",
            g.file, t.dims, spec.name, spec.shape
        )));
    }
    let v = g.dequantize(t)?;
    Ok(match fix {
        Fix::None => v,
        Fix::Unpermute(heads) => {
            let cols = if spec.shape.len() == 2 { spec.shape[1] } else { 1 };
            let rows = spec.shape[0];
            if !rows.is_multiple_of(2 * heads) {
                return Err(Error::Weights(format!(
                    "{}: tensor `{name}` has {rows} rows, not a multiple of 2 x {heads} heads",
                    g.file
                )));
            }
            unpermute_rope_rows(&v, heads, cols)
        }
        Fix::Transpose => transpose(&v, spec.shape[1], spec.shape[0]),
        Fix::PlusOne => v.iter().map(|x| x - 1.0).collect(),
    })
}

impl GgufInfo {
    pub fn from_gguf(g: &Gguf) -> Result<GgufInfo> {
        let (_, architecture) = arch_of(g)?;
        let strings = |key: &str| -> Result<Vec<String>> {
            match g.get(key) {
                None => Ok(Vec::new()),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.as_strings())
                    .map(|s| s.to_vec())
                    .ok_or_else(|| meta_err(g, format!("metadata `{key}` must be an array of strings"))),
            }
        };
        let numbers = |key: &str| -> Result<Option<Vec<i64>>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.to_i64s())
                    .map(Some)
                    .ok_or_else(|| meta_err(g, format!("metadata `{key}` must be an array of integers"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let token_types: Vec<i32> = numbers("tokenizer.ggml.token_type")?
            .unwrap_or_default()
            .into_iter()
            .map(|x| i32::try_from(x).unwrap_or(i32::MAX))
            .collect();
        let scores = match g.get("tokenizer.ggml.scores") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| a.to_f32s())
                .ok_or_else(|| meta_err(g, "metadata `tokenizer.ggml.scores` must be an array of numbers".into()))?,
        };
        for (what, n) in [("tokenizer.ggml.token_type", token_types.len()), ("tokenizer.ggml.scores", scores.len())] {
            if n != 0 && n != tokens.len() {
                return Err(meta_err(g, format!("`{what}` has {n} entries but there are {} tokens", tokens.len())));
            }
        }
        let tokenizer = GgufTokenizer {
            model: opt_str(g, "tokenizer.ggml.model")?.unwrap_or_default(),
            pre: opt_str(g, "tokenizer.ggml.pre")?,
            tokens,
            token_types,
            scores,
            merges: strings("tokenizer.ggml.merges")?,
            bos_id: opt_u32(g, "tokenizer.ggml.bos_token_id")?,
            eos_id: opt_u32(g, "tokenizer.ggml.eos_token_id")?,
            eot_id: opt_u32(g, "tokenizer.ggml.eot_token_id")?,
            pad_id: opt_u32(g, "tokenizer.ggml.padding_token_id")?,
            unk_id: opt_u32(g, "tokenizer.ggml.unknown_token_id")?,
            add_bos: opt_bool(g, "tokenizer.ggml.add_bos_token")?,
            add_eos: opt_bool(g, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: opt_bool(g, "tokenizer.ggml.add_space_prefix")?,
        };
        let mut tensor_types: Vec<(String, usize)> = Vec::new();
        for t in &g.tensors {
            match tensor_types.iter_mut().find(|(n, _)| n == t.ty.name) {
                Some(e) => e.1 += 1,
                None => tensor_types.push((t.ty.name.to_string(), 1)),
            }
        }
        Ok(GgufInfo {
            file: g.file.clone(),
            version: g.version,
            architecture,
            name: opt_str(g, "general.name")?,
            tokenizer,
            chat_template: opt_str(g, "tokenizer.chat_template")?,
            tensor_types,
        })
    }
}
