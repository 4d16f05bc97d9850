//! The model (LoRA merged in) as a GGUF v3 file, F32, F16 or Q8_0, written as llama.cpp's
//! `convert_hf_to_gguf.py` writes a `llama`, `qwen2` or `gpt2` checkpoint, so llama.cpp
//! (and every GGUF reader) loads it:
//! - tensor names: llama.cpp's (`token_embd.weight`, `blk.N.attn_q.weight`, ...), the
//!   inverse of the loader's map (`load::gguf_model`), in the order of the HF names (the
//!   converter walks the checkpoint's sorted tensor names);
//! - layouts: Llama's `q_proj` / `k_proj` rows (weights and biases) permuted to ggml's
//!   interleaved RoPE layout (the converter's `LlamaModel.permute`; Qwen2 is not permuted),
//!   GPT-2's Conv1D weights (in, out) transposed to (out, in); dims innermost first;
//! - types: 1-D tensors, `*_norm.weight`, `position_embd.weight` and biases always F32 (as
//!   the converter); the other matrices F32, F16 or Q8_0 (`general.file_type` 0, 1 or 7;
//!   under Q8_0 a matrix whose rows are not whole 32-value blocks falls back to F16, as the
//!   converter's `--outtype q8_0` does), Q8_0 with gguf-py's bytes (`load::quantize::q8_0`);
//! - a tied model has no `output.weight` (llama.cpp reuses `token_embd.weight`);
//! - the `{arch}.*` hyper-parameters, and the tokenizer and chat template the caller passes
//!   (a [`GgufTokenizer`] from a loaded GGUF, or one the caller builds);
//! - 32-byte alignment (GGUF's default, so no `general.alignment` key), every tensor's data
//!   padded to it.
//!
//! RoPE: the engine keeps inverse frequencies, not `rope_theta`. The base is recovered from
//! them; frequencies that are not exactly `default_inv_freq(theta)` (Llama 3 or linear
//! scaling) are written for `llama` as llama.cpp's `rope_freqs.weight` factors (each
//! frequency divided by its factor), and refused for `qwen2`, whose llama.cpp graph has no
//! such tensor.
//!
//! The bytes come from a generic writer ([`write_header`], [`write_gguf`]: any metadata and
//! tensors, in any version and alignment), which tests use to build GGUF files too.

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::load::gguf::{Array, GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::load::gguf_model::{gguf_name, permute_rope_rows, transpose, Fix};
use crate::load::quantize::q8_0;
use crate::load::GgufTokenizer;
use crate::model::{Arch, Model, ModelConfig, ParamSpec};
use crate::ops::rope::default_inv_freq;

use super::merged::{base_params, merged_param};

/// The type of the exported matrices (norms, vectors and positions are always F32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GgufDtype {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    /// 8-bit blocks of 32 with an f16 scale: about half of F16's bytes, and what a merged
    /// model of a compact-base run keeps close to its base's size.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl GgufDtype {
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32` = 0, `MOSTLY_F16` = 1,
    /// `MOSTLY_Q8_0` = 7).
    pub fn file_type(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
            GgufDtype::Q8_0 => 7,
        }
    }

    /// The type a matrix with rows of `cols` values is written in.
    fn ggml(self, cols: u64) -> GgmlType {
        let name = match self {
            GgufDtype::F32 => "F32",
            GgufDtype::Q8_0 if cols.is_multiple_of(32) => "Q8_0",
            GgufDtype::F16 | GgufDtype::Q8_0 => "F16",
        };
        GgmlType::by_name(name).expect("a ggml type")
    }

    /// The lowercase name used in settings, file names and the page (`f32`, `f16`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            GgufDtype::F32 => "f32",
            GgufDtype::F16 => "f16",
            GgufDtype::Q8_0 => "q8_0",
        }
    }
}

/// What goes into the file besides the weights.
#[derive(Clone, Copy, Debug)]
pub struct GgufExport<'a> {
    pub dtype: GgufDtype,
    /// `general.name` (left out when empty).
    pub name: &'a str,
    /// The `tokenizer.ggml.*` metadata. llama.cpp needs one to run the model; without it
    /// the file still parses (and loads here).
    pub tokenizer: Option<&'a GgufTokenizer>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<&'a str>,
}

impl Default for GgufExport<'_> {
    fn default() -> Self {
        GgufExport { dtype: GgufDtype::F32, name: "", tokenizer: None, chat_template: None }
    }
}

/// GGUF's version written.
pub const VERSION: u32 = 3;
/// `general.quantization_version` as the converter writes it (ggml's `GGML_QNT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;

/// Where a tensor's values come from.
#[derive(Clone, Debug)]
enum Source {
    /// The engine parameter with this spec index.
    Param(usize),
    /// Values computed here (`rope_freqs.weight`).
    Values(Vec<f32>),
}

/// One tensor of the file to be.
#[derive(Clone, Debug)]
struct Planned {
    name: String,
    /// ggml dims, innermost first.
    dims: Vec<u64>,
    ty: GgmlType,
    fix: Fix,
    /// The engine shape (HF layout) of the values handed in.
    shape: Vec<usize>,
    source: Source,
    offset: u64,
    n_bytes: u64,
}

/// The header, metadata, tensor infos and the layout of the data section.
struct Plan {
    head: Vec<u8>,
    tensors: Vec<Planned>,
    total: u64,
}

fn u32_of(what: &str, n: usize) -> Result<Value> {
    u32::try_from(n).map(Value::U32).map_err(|_| Error::Config(format!("GGUF export: {what} {n} exceeds uint32")))
}

/// The RoPE base whose default frequencies are `inv_freq`, and llama.cpp's per-frequency
/// factors when the frequencies are scaled (None when they are exactly the default).
pub fn rope_theta_and_factors(inv_freq: &[f32], head_dim: usize) -> (f32, Option<Vec<f32>>) {
    let n = inv_freq.len();
    if n < 2 {
        return (10000.0, None);
    }
    // inv_freq[i] = theta^(-2i/D) / s: the ratio of the first and last cancels a linear s,
    // and the exponent (D-2)/D ~ 1 keeps the f32 error of the estimate near 1e-7.
    let est = (inv_freq[0] as f64 / inv_freq[n - 1] as f64).powf(head_dim as f64 / (2.0 * (n - 1) as f64));
    let est = if est.is_finite() && est > 1.0 { est } else { 10000.0 };
    // Bases are round numbers: try the estimate at 1 to 9 significant digits, then as is.
    let mag = 10f64.powi(est.abs().log10().floor() as i32);
    let mut candidates: Vec<f32> =
        (0..9).map(|k| ((est / mag * 10f64.powi(k)).round() * mag / 10f64.powi(k)) as f32).collect();
    candidates.push(est as f32);
    for &theta in &candidates {
        if default_inv_freq(theta, head_dim) == inv_freq {
            return (theta, None);
        }
    }
    let theta = est.round() as f32;
    let base = default_inv_freq(theta, head_dim);
    (theta, Some(base.iter().zip(inv_freq).map(|(b, f)| b / f).collect()))
}

/// The file's metadata, in the converter's order.
fn metadata(cfg: &ModelConfig, opts: &GgufExport, rope_theta: Option<f32>) -> Result<Vec<(String, Value)>> {
    let a = match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Gpt2 => "gpt2",
        Arch::Qwen3 => "qwen3",
        Arch::Gemma3 => "gemma3",
    };
    let k = |s: &str| format!("{a}.{s}");
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
    ];
    if !opts.name.is_empty() {
        m.push(("general.name".into(), Value::String(opts.name.into())));
    }
    m.push((k("block_count"), u32_of("block_count", cfg.layers)?));
    m.push((k("context_length"), u32_of("context_length", cfg.max_pos)?));
    m.push((k("embedding_length"), u32_of("embedding_length", cfg.hidden)?));
    m.push((k("feed_forward_length"), u32_of("feed_forward_length", cfg.ffn)?));
    m.push((k("attention.head_count"), u32_of("head_count", cfg.heads)?));
    match cfg.arch {
        Arch::Gpt2 => m.push((k("attention.layer_norm_epsilon"), Value::F32(cfg.norm_eps))),
        Arch::Gemma3 => {
            // convert_hf_to_gguf.py's Gemma3Model keys; the layer pattern (every 6th
            // global), the local RoPE base (10000) and query_pre_attn_scalar = head_dim
            // are llama.cpp's fixed choices for the family, so a model that differs
            // cannot be written faithfully.
            let g = cfg.gemma.as_ref().ok_or_else(|| Error::Config("GGUF export: Gemma 3 settings missing".into()))?;
            let pattern: Vec<bool> = (0..cfg.layers).map(|i| (i + 1) % 6 != 0).collect();
            let scale = (cfg.head_dim as f64).powf(-0.5) as f32;
            if g.sliding != pattern
                || g.local_inv_freq != default_inv_freq(10_000.0, cfg.head_dim)
                || g.attn_scale != scale
            {
                return Err(Error::Config(
                    "GGUF export: llama.cpp's gemma3 fixes the layer pattern (every 6th layer global), the local \
                     RoPE base (10000) and query_pre_attn_scalar (= head_dim); this model differs"
                        .into(),
                ));
            }
            m.push((k("attention.head_count_kv"), u32_of("head_count_kv", cfg.kv_heads)?));
            m.push((k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.norm_eps)));
            m.push((k("attention.key_length"), u32_of("key_length", cfg.head_dim)?));
            m.push((k("attention.value_length"), u32_of("value_length", cfg.head_dim)?));
            m.push((k("rope.freq_base"), Value::F32(rope_theta.unwrap_or(1_000_000.0))));
            m.push((k("attention.sliding_window"), u32_of("sliding_window", g.window)?));
            if let Some(cap) = g.final_softcap {
                m.push((k("final_logit_softcapping"), Value::F32(cap)));
            }
        }
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            m.push((k("attention.head_count_kv"), u32_of("head_count_kv", cfg.kv_heads)?));
            m.push((k("rope.freq_base"), Value::F32(rope_theta.unwrap_or(10000.0))));
            m.push((k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.norm_eps)));
            // convert_hf_to_gguf.py writes these whenever config.json has `head_dim`, which
            // Qwen3's always has.
            if cfg.head_dim * cfg.heads != cfg.hidden || cfg.arch == Arch::Qwen3 {
                m.push((k("attention.key_length"), u32_of("key_length", cfg.head_dim)?));
                m.push((k("attention.value_length"), u32_of("value_length", cfg.head_dim)?));
            }
        }
    }
    m.push(("general.file_type".into(), Value::U32(opts.dtype.file_type())));
    if cfg.arch == Arch::Llama {
        m.push((k("vocab_size"), u32_of("vocab_size", cfg.vocab)?));
    }
    if cfg.arch != Arch::Gpt2 {
        m.push((k("rope.dimension_count"), u32_of("rope.dimension_count", cfg.head_dim)?));
    }
    if let Some(t) = opts.tokenizer {
        tokenizer_metadata(cfg, t, &mut m)?;
    }
    if let Some(ct) = opts.chat_template {
        m.push(("tokenizer.chat_template".into(), Value::String(ct.into())));
    }
    m.push(("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION)));
    Ok(m)
}

fn tokenizer_metadata(cfg: &ModelConfig, t: &GgufTokenizer, m: &mut Vec<(String, Value)>) -> Result<()> {
    let bad = |msg: String| Error::Config(format!("GGUF export: {msg}"));
    if t.model.is_empty() {
        return Err(bad("the tokenizer has no model (`tokenizer.ggml.model`, e.g. `gpt2` or `llama`)".into()));
    }
    if t.tokens.len() > cfg.vocab {
        return Err(bad(format!(
            "the tokenizer has {} tokens but the model only {} embeddings",
            t.tokens.len(),
            cfg.vocab
        )));
    }
    for (what, n) in [("token types", t.token_types.len()), ("scores", t.scores.len())] {
        if n != 0 && n != t.tokens.len() {
            return Err(bad(format!("the tokenizer has {n} {what} for {} tokens", t.tokens.len())));
        }
    }
    let key = |s: &str| format!("tokenizer.ggml.{s}");
    m.push((key("model"), Value::String(t.model.clone())));
    if let Some(p) = &t.pre {
        m.push((key("pre"), Value::String(p.clone())));
    }
    m.push((key("tokens"), Value::Array(Array::String(t.tokens.clone()))));
    if !t.scores.is_empty() {
        m.push((key("scores"), Value::Array(Array::F32(t.scores.clone()))));
    }
    if !t.token_types.is_empty() {
        m.push((key("token_type"), Value::Array(Array::I32(t.token_types.clone()))));
    }
    if !t.merges.is_empty() {
        m.push((key("merges"), Value::Array(Array::String(t.merges.clone()))));
    }
    let ids = [
        ("bos_token_id", t.bos_id),
        ("eos_token_id", t.eos_id),
        ("eot_token_id", t.eot_id),
        ("unknown_token_id", t.unk_id),
        ("padding_token_id", t.pad_id),
    ];
    for (k, id) in ids {
        if let Some(id) = id {
            if id as usize >= cfg.vocab {
                return Err(bad(format!("tokenizer.ggml.{k} {id} is outside the vocabulary of {}", cfg.vocab)));
            }
            m.push((key(k), Value::U32(id)));
        }
    }
    for (k, b) in [("add_bos_token", t.add_bos), ("add_eos_token", t.add_eos), ("add_space_prefix", t.add_space_prefix)]
    {
        if let Some(b) = b {
            m.push((key(k), Value::Bool(b)));
        }
    }
    Ok(())
}

/// Lay out the file for a model of `cfg` whose parameters are `specs` (index = the source
/// index handed back to [`Plan::append`]); `skip` leaves parameters out (LoRA A and B).
fn plan(cfg: &ModelConfig, specs: &[ParamSpec], skip: &dyn Fn(usize) -> bool, opts: &GgufExport) -> Result<Plan> {
    let f32t = GgmlType::by_name("F32").expect("F32");
    let mut tensors = Vec::new();
    // RoPE base, and factors where the frequencies are scaled.
    let mut rope_theta = None;
    if cfg.arch != Arch::Gpt2 {
        let (theta, factors) = rope_theta_and_factors(&cfg.inv_freq, cfg.head_dim);
        rope_theta = Some(theta);
        if let Some(f) = factors {
            if cfg.arch != Arch::Llama {
                return Err(Error::Config(
                    "GGUF export: scaled RoPE frequencies can only be written for llama (as `rope_freqs.weight`)"
                        .into(),
                ));
            }
            tensors.push(Planned {
                name: "rope_freqs.weight".into(),
                dims: vec![f.len() as u64],
                ty: f32t,
                fix: Fix::None,
                shape: vec![f.len()],
                source: Source::Values(f),
                offset: 0,
                n_bytes: 0,
            });
        }
    }
    let mut order: Vec<usize> = (0..specs.len()).filter(|&i| !skip(i)).collect();
    order.sort_by(|&a, &b| specs[a].name.cmp(&specs[b].name));
    for i in order {
        let spec = &specs[i];
        if cfg.tied && spec.name == "lm_head.weight" {
            continue;
        }
        let (name, fix) = gguf_name(cfg, &spec.name).ok_or_else(|| {
            Error::Weights(format!("GGUF export: no llama.cpp tensor name is known for `{}`", spec.name))
        })?;
        let dims: Vec<u64> = match fix {
            Fix::Transpose => spec.shape.iter().map(|&d| d as u64).collect(),
            _ => spec.shape.iter().rev().map(|&d| d as u64).collect(),
        };
        if let Fix::Unpermute(heads) = fix {
            if !spec.shape[0].is_multiple_of(2 * heads) {
                return Err(Error::Weights(format!(
                    "GGUF export: `{}` has {} rows, not a multiple of 2 x {heads} heads",
                    spec.name, spec.shape[0]
                )));
            }
        }
        // The converter's rule: vectors, norms, positions and biases stay F32.
        let f32_only = dims.len() <= 1
            || name.ends_with("_norm.weight")
            || name == "position_embd.weight"
            || !name.ends_with(".weight");
        let ty = if f32_only { f32t } else { opts.dtype.ggml(dims[0]) };
        tensors.push(Planned {
            name,
            dims,
            ty,
            fix,
            shape: spec.shape.clone(),
            source: Source::Param(i),
            offset: 0,
            n_bytes: 0,
        });
    }
    let mut at = 0u64;
    for t in &mut tensors {
        t.n_bytes = t.dims.iter().product::<u64>() / t.ty.block_values as u64 * t.ty.block_bytes as u64;
        t.offset = at;
        at = (at + t.n_bytes).next_multiple_of(DEFAULT_ALIGNMENT);
    }
    let meta = metadata(cfg, opts, rope_theta)?;
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| TensorInfo { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty.id, offset: t.offset })
        .collect();
    let head = write_header(VERSION, DEFAULT_ALIGNMENT, &meta, &infos);
    Ok(Plan { head, tensors, total: at })
}

impl Plan {
    /// A buffer with the header written and room for all the data.
    fn start(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.total as usize);
        out.extend(&self.head);
        out
    }

    /// Lay out tensor `k`'s values (engine layout) as the file stores them, append them
    /// and pad to the alignment.
    fn append(&self, k: usize, v: Vec<f32>, out: &mut Vec<u8>) -> Result<()> {
        let t = &self.tensors[k];
        let n: usize = t.shape.iter().product();
        if v.len() != n {
            return Err(Error::Weights(format!(
                "GGUF export: `{}` got {} values for shape {:?}",
                t.name,
                v.len(),
                t.shape
            )));
        }
        let v = match t.fix {
            Fix::None => v,
            Fix::Unpermute(heads) => {
                let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
                permute_rope_rows(&v, heads, cols)
            }
            Fix::Transpose => transpose(&v, t.shape[0], t.shape[1]),
            Fix::PlusOne => v.iter().map(|x| x + 1.0).collect(),
        };
        match t.ty.name {
            "F16" => v.iter().for_each(|&x| out.extend(f16::from_f32(x).to_le_bytes())),
            // Rows are whole blocks (`GgufDtype::ggml`), so the blocks of the flat file-order
            // values are the rows' blocks.
            "Q8_0" => out.extend(q8_0(&v)),
            _ => v.iter().for_each(|&x| out.extend(x.to_le_bytes())),
        }
        let data_start = self.head.len();
        debug_assert_eq!((out.len() - data_start) as u64, t.offset + t.n_bytes);
        out.resize((out.len() - data_start).next_multiple_of(DEFAULT_ALIGNMENT as usize) + data_start, 0);
        Ok(())
    }
}

/// The GGUF file of `model`'s current weights, every LoRA adapter merged into its base
/// weight (W + s B A, as [`super::merged`]). Reads one parameter from the GPU at a time, so
/// besides the file only one tensor is held on the host.
pub async fn export_gguf(gpu: &Gpu, model: &Model, opts: &GgufExport<'_>) -> Result<Vec<u8>> {
    let base = base_params(model);
    let plan = plan(&model.cfg, &model.params.specs, &|i| !base.contains(&i), opts)?;
    let mut out = plan.start();
    for k in 0..plan.tensors.len() {
        let v = match &plan.tensors[k].source {
            Source::Param(p) => merged_param(gpu, model, *p).await?,
            Source::Values(v) => v.clone(),
        };
        plan.append(k, v, &mut out)?;
    }
    Ok(out)
}

/// The GGUF file of a model of `cfg` from host tensors `(HF name, shape, values)` in the
/// engine's (Hugging Face) layout, e.g. a `model.safetensors`; every parameter of `cfg`
/// must be present, extra tensors are an error.
pub fn gguf_from_tensors(
    cfg: &ModelConfig,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    opts: &GgufExport<'_>,
) -> Result<Vec<u8>> {
    let (specs, _) = crate::model::arch::build(cfg);
    let mut values = Vec::with_capacity(specs.len());
    for s in &specs {
        let (_, shape, v) = tensors.iter().find(|t| t.0 == s.name).ok_or_else(|| {
            Error::Weights(format!("GGUF export: tensor `{}` (shape {:?}) is missing", s.name, s.shape))
        })?;
        if *shape != s.shape {
            return Err(Error::Weights(format!(
                "GGUF export: tensor `{}` has shape {shape:?}, the model needs {:?}",
                s.name, s.shape
            )));
        }
        values.push(v);
    }
    if let Some(extra) = tensors.iter().find(|t| !specs.iter().any(|s| s.name == t.0)) {
        return Err(Error::Weights(format!("GGUF export: tensor `{}` is not a parameter of the model", extra.0)));
    }
    let plan = plan(cfg, &specs, &|_| false, opts)?;
    let mut out = plan.start();
    for k in 0..plan.tensors.len() {
        let v = match &plan.tensors[k].source {
            Source::Param(p) => values[*p].clone(),
            Source::Values(v) => v.clone(),
        };
        plan.append(k, v, &mut out)?;
    }
    Ok(out)
}

// ---- the generic writer: any metadata and tensors, as GGUF lays them out ----------------

/// One entry of a GGUF file's tensor infos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml dims, innermost first.
    pub dims: Vec<u64>,
    /// The ggml type id (written as is, known to the reader or not).
    pub ty: u32,
    /// Where the data starts, in bytes from the start of the data section.
    pub offset: u64,
}

/// A tensor for [`write_gguf`]: its name, ggml dims (innermost first), ggml type id and the
/// bytes the file stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

/// A GGUF string: its length in bytes (u64), then its UTF-8 bytes.
pub fn put_string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn array_type(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// An array's element type, count and elements.
fn put_array(b: &mut Vec<u8>, a: &Array) {
    b.extend(array_type(a).to_le_bytes());
    b.extend((a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => b.extend(v),
        Array::I8(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U16(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I16(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::F32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::F64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::Bool(v) => v.iter().for_each(|&x| b.push(x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_string(b, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(b, a)),
    }
}

/// A metadata entry: key, value type, value.
pub fn put_kv(b: &mut Vec<u8>, key: &str, v: &Value) {
    put_string(b, key);
    b.extend(value_type(v).to_le_bytes());
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend(x.to_le_bytes()),
        Value::U16(x) => b.extend(x.to_le_bytes()),
        Value::I16(x) => b.extend(x.to_le_bytes()),
        Value::U32(x) => b.extend(x.to_le_bytes()),
        Value::I32(x) => b.extend(x.to_le_bytes()),
        Value::U64(x) => b.extend(x.to_le_bytes()),
        Value::I64(x) => b.extend(x.to_le_bytes()),
        Value::F32(x) => b.extend(x.to_le_bytes()),
        Value::F64(x) => b.extend(x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => put_string(b, s),
        Value::Array(a) => put_array(b, a),
    }
}

/// Everything before the data section: magic, `version`, the counts, the metadata entries
/// and tensor infos in the order given, zero-padded to `alignment`. Written as given, not
/// checked: an `alignment` other than GGUF's default 32 needs a `general.alignment` entry
/// in `meta` for a reader to find the data.
pub fn write_header<K: AsRef<str>>(
    version: u32,
    alignment: u64,
    meta: &[(K, Value)],
    tensors: &[TensorInfo],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(MAGIC);
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_kv(&mut b, k.as_ref(), v);
    }
    for t in tensors {
        put_string(&mut b, &t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.ty.to_le_bytes());
        b.extend(t.offset.to_le_bytes());
    }
    b.resize((b.len() as u64).next_multiple_of(alignment) as usize, 0);
    b
}

/// A whole GGUF file: [`write_header`], then each tensor's bytes in order, each starting at
/// the next multiple of `alignment` of the data section.
pub fn write_gguf<K: AsRef<str>>(version: u32, alignment: u64, meta: &[(K, Value)], tensors: &[RawTensor]) -> Vec<u8> {
    let mut at = 0u64;
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| {
            let offset = at.next_multiple_of(alignment);
            at = offset + t.data.len() as u64;
            TensorInfo { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty, offset }
        })
        .collect();
    let mut b = write_header(version, alignment, meta, &infos);
    let start = b.len();
    for (t, info) in tensors.iter().zip(&infos) {
        b.resize(start + info.offset as usize, 0);
        b.extend(&t.data);
    }
    b
}
