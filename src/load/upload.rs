//! Parsed model files onto the GPU: a [`Model`] from a Hugging Face folder's config and
//! safetensors shards, from a GGUF file, or from the hub (the `gpu` feature). The parsing
//! itself is the host-side modules next to this one.

use super::base::Base;
use super::gguf::Gguf;
use super::gguf_model::{compact_format_for, compact_tensor_for, config_from_gguf, tensor_for};
#[cfg(not(target_arch = "wasm32"))]
use super::{hf_tokenizer, shard_names, ModelSource};
use super::{hub, safetensors, GgufInfo};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::params::ParamInit;
use crate::model::{Arch, LoraConfig, Model, ModelConfig, ParamSpec};
use crate::tokenize::Tokenizer;

/// Build a model from `config.json` text and one or more safetensors files (shards).
pub fn model_from_hf_bytes(gpu: &Gpu, config_json: &str, shards: &[(&str, &[u8])]) -> Result<Model> {
    model_from_hf_bytes_lora(gpu, config_json, shards, None)
}

/// `model_from_hf_bytes` with LoRA adapters on a frozen base when `lora` is given (the
/// base kept as `Base::Auto` says: f16/bf16 tensors stay so on the GPU).
pub fn model_from_hf_bytes_lora(
    gpu: &Gpu,
    config_json: &str,
    shards: &[(&str, &[u8])],
    lora: Option<&LoraConfig>,
) -> Result<Model> {
    model_from_hf_bytes_base(gpu, config_json, shards, lora, Base::Auto)
}

/// `model_from_hf_bytes_lora` with the frozen base kept as `base` says.
pub fn model_from_hf_bytes_base(
    gpu: &Gpu,
    config_json: &str,
    shards: &[(&str, &[u8])],
    lora: Option<&LoraConfig>,
    base: Base,
) -> Result<Model> {
    let cfg = ModelConfig::from_hf_json(config_json)?;
    let files = shards.iter().map(|(name, bytes)| safetensors::File::parse(name, bytes)).collect::<Result<Vec<_>>>()?;
    let find = |spec: &ParamSpec| {
        files.iter().find_map(|f| f.find(&spec.name)).ok_or_else(|| {
            Error::Weights(format!(
                "tensor `{}` (shape {:?}) is missing from {}",
                spec.name,
                spec.shape,
                shards.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let compact_of = |spec: &ParamSpec| {
        if !spec.may_be_compact() {
            return None;
        }
        let file = find(spec).ok()?.compact_format();
        base.format_for(spec.shape[0], spec.shape[1], file)
    };
    Model::build_compact(gpu, cfg, lora, compact_of, |spec| {
        let t = find(spec)?;
        let Some(format) = compact_of(spec) else { return t.to_f32(&spec.shape).map(ParamInit::F32) };
        let (rows, cols) = (spec.shape[0], spec.shape[1]);
        let raw = || t.to_compact(&spec.shape);
        Base::tensor(&spec.name, format, (rows, cols), t.compact_format(), raw, || t.to_f32(&spec.shape))
            .map(ParamInit::Compact)
    })
}

/// A loaded model and what its source provided besides the weights.
pub struct Loaded {
    pub model: Model,
    /// From tokenizer.json (+ tokenizer_config.json, chat_template.jinja) or the GGUF.
    pub tokenizer: Option<Tokenizer>,
    /// The Hugging Face config.json text (folders and hub repositories).
    pub config_json: Option<String>,
    /// The GGUF metadata (GGUF files).
    pub gguf: Option<GgufInfo>,
}

/// A Hugging Face folder on disk: `config.json` and `model.safetensors`, or the shards
/// listed by `model.safetensors.index.json`.
#[cfg(not(target_arch = "wasm32"))]
pub fn model_from_hf_dir(gpu: &Gpu, dir: &std::path::Path) -> Result<Model> {
    model_from_hf_dir_lora(gpu, dir, None)
}

/// `model_from_hf_dir` with LoRA adapters on a frozen base when `lora` is given.
#[cfg(not(target_arch = "wasm32"))]
pub fn model_from_hf_dir_lora(gpu: &Gpu, dir: &std::path::Path, lora: Option<&LoraConfig>) -> Result<Model> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| Error::io(p.display().to_string(), e))
    };
    let config = String::from_utf8(read("config.json")?)
        .map_err(|_| Error::Config(format!("{}/config.json is not UTF-8", dir.display())))?;
    let names = if dir.join("model.safetensors").exists() {
        vec!["model.safetensors".to_string()]
    } else {
        shard_names("model.safetensors.index.json", &read("model.safetensors.index.json")?)?
    };
    let data = names.iter().map(|n| read(n)).collect::<Result<Vec<_>>>()?;
    let shards: Vec<(&str, &[u8])> = names.iter().map(|n| n.as_str()).zip(data.iter().map(|d| d.as_slice())).collect();
    model_from_hf_bytes_lora(gpu, &config, &shards, lora)
}

/// Build a model from the bytes of a GGUF file (`name` names it in errors).
pub fn model_from_gguf_bytes(gpu: &Gpu, name: &str, bytes: &[u8]) -> Result<(Model, GgufInfo)> {
    model_from_gguf_bytes_lora(gpu, name, bytes, None)
}

/// `model_from_gguf_bytes` with LoRA adapters on a frozen base when `lora` is given (the
/// base's GGUF blocks kept compact on the GPU, `Base::Auto`).
pub fn model_from_gguf_bytes_lora(
    gpu: &Gpu,
    name: &str,
    bytes: &[u8],
    lora: Option<&LoraConfig>,
) -> Result<(Model, GgufInfo)> {
    model_from_gguf_bytes_base(gpu, name, bytes, lora, Base::Auto)
}

/// `model_from_gguf_bytes_lora` with the frozen base kept as `base` says.
pub fn model_from_gguf_bytes_base(
    gpu: &Gpu,
    name: &str,
    bytes: &[u8],
    lora: Option<&LoraConfig>,
    base: Base,
) -> Result<(Model, GgufInfo)> {
    let g = Gguf::parse(name, bytes)?;
    let info = GgufInfo::from_gguf(&g)?;
    let cfg = config_from_gguf(&g)?;
    if cfg.arch == Arch::Gpt2 {
        // The converter writes GPT-2's tied head as a copy of the embedding; the engine
        // ties them, so a different `output.weight` cannot be honoured.
        if let (Some(o), Some(e)) = (g.tensor("output.weight"), g.tensor("token_embd.weight")) {
            if o.ty != e.ty || g.tensor_bytes(o) != g.tensor_bytes(e) {
                return Err(Error::Weights(format!(
                    "{name}: GPT-2 `output.weight` differs from `token_embd.weight`; only a tied head is supported"
                )));
            }
        }
    }
    let model_cfg = cfg.clone();
    let compact_of = |spec: &ParamSpec| compact_format_for(&g, &model_cfg, spec, base);
    let model = Model::build_compact(gpu, cfg, lora, compact_of, |spec| match compact_of(spec) {
        Some(f) => compact_tensor_for(&g, &model_cfg, spec, f).map(ParamInit::Compact),
        None => tensor_for(&g, &model_cfg, spec).map(ParamInit::F32),
    })?;
    Ok((model, info))
}

/// A GGUF file on disk.
#[cfg(not(target_arch = "wasm32"))]
pub fn model_from_gguf_file(gpu: &Gpu, path: &std::path::Path) -> Result<(Model, GgufInfo)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    model_from_gguf_bytes(gpu, &path.display().to_string(), &bytes)
}

impl hub::HubFiles {
    /// Build the model on `gpu`.
    pub fn model(&self, gpu: &Gpu) -> Result<Model> {
        model_from_hf_bytes(gpu, self.config_json()?, &self.shards())
    }
}

/// [`hub::fetch_model`], then build the model on `gpu`.
#[cfg(not(target_arch = "wasm32"))]
pub async fn model_from_hub(
    gpu: &Gpu,
    hub: &hub::Hub,
    repo: &hub::HubRepo,
    progress: &mut dyn FnMut(hub::Progress),
) -> Result<Model> {
    hub::fetch_model(hub, repo, progress).await?.model(gpu)
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelSource {
    /// The model (with LoRA adapters on a frozen base when `lora` is given) and what came
    /// with it: its tokenizer, and what the exporters need.
    pub async fn load_with(
        &self,
        gpu: &Gpu,
        hub: &hub::Hub,
        lora: Option<&LoraConfig>,
        progress: &mut dyn FnMut(hub::Progress),
    ) -> Result<Loaded> {
        match self {
            ModelSource::Gguf(p) => {
                let bytes = std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e))?;
                let (model, info) = model_from_gguf_bytes_lora(gpu, &p.display().to_string(), &bytes, lora)?;
                let tokenizer = Some(Tokenizer::from_gguf(&info.tokenizer, info.chat_template.as_deref())?);
                Ok(Loaded { model, tokenizer, config_json: None, gguf: Some(info) })
            }
            ModelSource::HfDir(dir) => {
                let model = model_from_hf_dir_lora(gpu, dir, lora)?;
                let read = |n: &str| std::fs::read(dir.join(n)).ok();
                let config_json = read("config.json").and_then(|b| String::from_utf8(b).ok());
                let tokenizer =
                    hf_tokenizer(read("tokenizer.json"), read("tokenizer_config.json"), read("chat_template.jinja"))?;
                Ok(Loaded { model, tokenizer, config_json, gguf: None })
            }
            ModelSource::Hub(repo) => {
                let files = hub::fetch_model(hub, repo, progress).await?;
                let config = files.config_json()?.to_string();
                let model = model_from_hf_bytes_lora(gpu, &config, &files.shards(), lora)?;
                let get = |n: &str| files.get(n).map(|b| b.to_vec());
                let tokenizer =
                    hf_tokenizer(get("tokenizer.json"), get("tokenizer_config.json"), get("chat_template.jinja"))?;
                Ok(Loaded { model, tokenizer, config_json: Some(config), gguf: None })
            }
        }
    }

    /// Load the model: from disk, or fetched from `hub` (progress per file).
    pub async fn load(&self, gpu: &Gpu, hub: &hub::Hub, progress: &mut dyn FnMut(hub::Progress)) -> Result<Model> {
        match self {
            ModelSource::Gguf(p) => model_from_gguf_file(gpu, p).map(|(m, _)| m),
            ModelSource::HfDir(p) => model_from_hf_dir(gpu, p),
            ModelSource::Hub(repo) => model_from_hub(gpu, hub, repo, progress).await,
        }
    }
}
