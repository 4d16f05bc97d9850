//! Model files in: Hugging Face folders (config.json + safetensors) and GGUF files, from bytes, so the
//! same code serves files on disk, files the browser hands over, and fetched responses.

//!
//! Parsing is host-side: every file becomes plain Rust data (tensor views, f32 values,
//! configs, tokenizers) without a GPU, which is what the fuzz targets exercise. Building
//! a [`Model`](crate::model::Model) on the GPU from them is `upload`, behind the `gpu`
//! feature.

pub mod base;
pub mod compact;
pub mod dequant;
pub mod gguf;
pub mod gguf_model;
pub mod hub;
pub mod quantize;
pub mod safetensors;
#[cfg(feature = "gpu")]
mod upload;

pub use gguf_model::{GgufInfo, GgufTokenizer};
#[cfg(feature = "gpu")]
pub use upload::{
    model_from_gguf_bytes, model_from_gguf_bytes_base, model_from_gguf_bytes_lora, model_from_hf_bytes,
    model_from_hf_bytes_base, model_from_hf_bytes_lora, Loaded,
};
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub use upload::{model_from_gguf_file, model_from_hf_dir, model_from_hf_dir_lora};

use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;

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
