//! Model files in: Hugging Face folders (config.json + safetensors) and GGUF files, from bytes, so the
//! same code serves files on disk, files the browser hands over, and fetched responses.

pub mod dequant;
pub mod gguf;
pub mod gguf_model;
pub mod hub;
pub mod safetensors;

#[cfg(not(target_arch = "wasm32"))]
pub use gguf_model::model_from_gguf_file;
pub use gguf_model::{model_from_gguf_bytes, model_from_gguf_bytes_lora, GgufInfo, GgufTokenizer};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{LoraConfig, Model, ModelConfig};
use crate::tokenize::Tokenizer;

/// Build a model from `config.json` text and one or more safetensors files (shards).
pub fn model_from_hf_bytes(gpu: &Gpu, config_json: &str, shards: &[(&str, &[u8])]) -> Result<Model> {
    model_from_hf_bytes_lora(gpu, config_json, shards, None)
}

/// `model_from_hf_bytes` with LoRA adapters on a frozen base when `lora` is given.
pub fn model_from_hf_bytes_lora(
    gpu: &Gpu,
    config_json: &str,
    shards: &[(&str, &[u8])],
    lora: Option<&LoraConfig>,
) -> Result<Model> {
    let cfg = ModelConfig::from_hf_json(config_json)?;
    let files = shards.iter().map(|(name, bytes)| safetensors::File::parse(name, bytes)).collect::<Result<Vec<_>>>()?;
    Model::build(gpu, cfg, lora, |spec| {
        for f in &files {
            if let Some(t) = f.find(&spec.name) {
                return t.to_f32(&spec.shape);
            }
        }
        Err(Error::Weights(format!(
            "tensor `{}` (shape {:?}) is missing from {}",
            spec.name,
            spec.shape,
            shards.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        )))
    })
}

/// The shard file names a `model.safetensors.index.json` lists in its `weight_map`, each
/// once (ordered by the first tensor name that maps to it).
pub fn shard_names(index_name: &str, index_json: &[u8]) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(index_json).map_err(|e| Error::Weights(format!("{index_name}: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Weights(format!("{index_name} has no `weight_map` object")))?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| Error::Weights(format!("{index_name}: the file of tensor `{tensor}` is not a string")))?;
        if !names.iter().any(|n| n == f) {
            names.push(f.to_string());
        }
    }
    if names.is_empty() {
        return Err(Error::Weights(format!("{index_name}: `weight_map` is empty")));
    }
    Ok(names)
}

/// What a `--model` argument names: a GGUF file, a Hugging Face folder, or a model on the
/// hub (`namespace/name`, optionally `@revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(std::path::PathBuf),
    HfDir(std::path::PathBuf),
    Hub(hub::HubRepo),
}

impl ModelSource {
    /// Something on disk wins: a folder is a Hugging Face folder, a `.gguf` file is GGUF.
    /// Otherwise an argument that looks like a path (a `.gguf` or `.safetensors` name,
    /// `./`, `../`, `/`, `~`, a backslash, two or more `/`) is reported missing, and
    /// anything else must be a valid hub model id.
    pub fn parse(arg: &str) -> Result<ModelSource> {
        use std::path::{Path, PathBuf};
        let path = Path::new(arg);
        let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if path.is_dir() {
            return Ok(ModelSource::HfDir(PathBuf::from(arg)));
        }
        if path.is_file() {
            if is_gguf {
                return Ok(ModelSource::Gguf(PathBuf::from(arg)));
            }
            return Err(Error::Usage(format!(
                "{arg}: expected a .gguf file, a Hugging Face model folder (config.json + *.safetensors) or a hub model id"
            )));
        }
        let looks_like_path = is_gguf
            || arg.ends_with(".safetensors")
            || arg.ends_with(".json")
            || arg.starts_with(['.', '/', '~'])
            || arg.contains('\\')
            || arg.split('@').next().unwrap_or("").matches('/').count() > 1;
        if looks_like_path || arg.is_empty() {
            return Err(Error::Usage(format!("{arg}: no such file or folder")));
        }
        hub::HubRepo::parse(arg).map(ModelSource::Hub)
    }

    /// The model (with LoRA adapters on a frozen base when `lora` is given) and what came
    /// with it: its tokenizer, and what the exporters need.
    #[cfg(not(target_arch = "wasm32"))]
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
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn load(&self, gpu: &Gpu, hub: &hub::Hub, progress: &mut dyn FnMut(hub::Progress)) -> Result<Model> {
        match self {
            ModelSource::Gguf(p) => gguf_model::model_from_gguf_file(gpu, p).map(|(m, _)| m),
            ModelSource::HfDir(p) => model_from_hf_dir(gpu, p),
            ModelSource::Hub(repo) => hub::model_from_hub(gpu, hub, repo, progress).await,
        }
    }
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

/// A Hugging Face tokenizer from its files, when tokenizer.json is there.
pub fn hf_tokenizer(
    tokenizer_json: Option<Vec<u8>>,
    tokenizer_config: Option<Vec<u8>>,
    chat_template: Option<Vec<u8>>,
) -> Result<Option<Tokenizer>> {
    let Some(json) = tokenizer_json else { return Ok(None) };
    let mut t = Tokenizer::from_hf_bytes(&json, tokenizer_config.as_deref())?;
    if let Some(src) = chat_template.and_then(|b| String::from_utf8(b).ok()) {
        t = t.with_chat_template(&src)?;
    }
    Ok(Some(t))
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
