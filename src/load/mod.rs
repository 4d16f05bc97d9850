//! Model files in: Hugging Face folders (config.json + safetensors) and GGUF files, from bytes, so the
//! same code serves files on disk, files the browser hands over, and fetched responses.

pub mod dequant;
pub mod gguf;
pub mod gguf_model;
pub mod safetensors;

#[cfg(not(target_arch = "wasm32"))]
pub use gguf_model::model_from_gguf_file;
pub use gguf_model::{model_from_gguf_bytes, GgufInfo, GgufTokenizer};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{LoraConfig, Model, ModelConfig};

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
    let mut names = Vec::new();
    if dir.join("model.safetensors").exists() {
        names.push("model.safetensors".to_string());
    } else {
        let index = read("model.safetensors.index.json")?;
        let v: serde_json::Value =
            serde_json::from_slice(&index).map_err(|e| Error::Weights(format!("model.safetensors.index.json: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Weights("model.safetensors.index.json has no `weight_map`".into()))?;
        for f in map.values().filter_map(|f| f.as_str()) {
            if !names.iter().any(|n| n == f) {
                names.push(f.to_string());
            }
        }
    }
    let data = names.iter().map(|n| read(n)).collect::<Result<Vec<_>>>()?;
    let shards: Vec<(&str, &[u8])> = names.iter().map(|n| n.as_str()).zip(data.iter().map(|d| d.as_slice())).collect();
    model_from_hf_bytes_lora(gpu, &config, &shards, lora)
}
