//! A model from its files, by name: one `.gguf`, or a Hugging Face folder (`config.json`,
//! `model.safetensors` or the shards its index lists, the tokenizer files). The page hands
//! files over as bytes; the command line reads a folder, a file or a hub repository into
//! the same form, so both load through [`load`].

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::load::base::Base;
use crate::load::gguf_model::GgufInfo;
use crate::load::{hf_tokenizer, shard_names};
use crate::load::{model_from_gguf_bytes_base, model_from_hf_bytes_base};
use crate::model::{LoraConfig, Model};
use crate::tokenize::Tokenizer;

/// The Hugging Face files kept with a model and copied into a merged export as they came.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
];

/// What came with the weights: the tokenizer and what the exporters need.
pub struct ModelMeta {
    /// What the user named: a file name, a folder, a hub id.
    pub name: String,
    pub tokenizer: Option<Tokenizer>,
    /// The HF config.json text (folders and hub repositories), for the merged export.
    pub config_json: Option<String>,
    /// [`TOKENIZER_FILES`] that were there.
    pub tokenizer_files: Vec<(String, Vec<u8>)>,
    /// The GGUF metadata (GGUF bases), for the GGUF export.
    pub gguf: Option<GgufInfo>,
}

impl ModelMeta {
    /// "gguf" or "hf".
    pub fn source(&self) -> &'static str {
        if self.gguf.is_some() {
            "gguf"
        } else {
            "hf"
        }
    }
}

/// Load from `(file name, bytes)` pairs (folder prefixes in names are ignored), with LoRA
/// adapters on a frozen base when `lora` is given.
pub fn load(
    gpu: &Gpu,
    name: &str,
    files: &[(String, Vec<u8>)],
    lora: Option<&LoraConfig>,
    base: Base,
) -> Result<(Model, ModelMeta)> {
    let file_name = |p: &str| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string();
    let all: Vec<(String, &[u8])> = files.iter().map(|(n, d)| (file_name(n), d.as_slice())).collect();
    let find = |n: &str| all.iter().find(|(b, _)| b == n).map(|(_, d)| *d);
    if let Some((file, bytes)) = all.iter().find(|(b, _)| b.to_lowercase().ends_with(".gguf")) {
        let (model, info) = model_from_gguf_bytes_base(gpu, file, bytes, lora, base)?;
        let tok = Tokenizer::from_gguf(&info.tokenizer, info.chat_template.as_deref())?;
        let meta = ModelMeta {
            name: name.to_string(),
            tokenizer: Some(tok),
            config_json: None,
            tokenizer_files: Vec::new(),
            gguf: Some(info),
        };
        return Ok((model, meta));
    }
    let config = find("config.json").ok_or_else(|| {
        Error::Usage(format!(
            "{name}: the model files need a config.json (a Hugging Face model folder) or a .gguf file"
        ))
    })?;
    let config = String::from_utf8(config.to_vec())
        .map_err(|_| Error::Config(format!("{name}: config.json is not UTF-8 text")))?;
    let names = match find("model.safetensors.index.json") {
        Some(index) if find("model.safetensors").is_none() => shard_names("model.safetensors.index.json", index)?,
        _ => all.iter().filter(|(b, _)| b.ends_with(".safetensors")).map(|(b, _)| b.clone()).collect(),
    };
    if names.is_empty() {
        return Err(Error::Usage(format!("{name}: the model files need a .safetensors file next to config.json")));
    }
    let mut shards = Vec::new();
    for n in &names {
        let d = find(n).ok_or_else(|| Error::Usage(format!("{name}: {n} (listed in the index) is missing")))?;
        shards.push((n.as_str(), d));
    }
    let model = model_from_hf_bytes_base(gpu, &config, &shards, lora, base)?;
    let own = |n: &str| find(n).map(|d| d.to_vec());
    let tokenizer = hf_tokenizer(own("tokenizer.json"), own("tokenizer_config.json"), own("chat_template.jinja"))?;
    let tokenizer_files = all
        .iter()
        .filter(|(b, _)| TOKENIZER_FILES.contains(&b.as_str()))
        .map(|(b, d)| (b.clone(), d.to_vec()))
        .collect();
    Ok((model, ModelMeta { name: name.to_string(), tokenizer, config_json: Some(config), tokenizer_files, gguf: None }))
}

/// The files of a `--model` argument on disk or on the hub, in [`load`]'s form.
#[cfg(not(target_arch = "wasm32"))]
pub async fn read_source(
    source: &crate::load::ModelSource,
    hub: &crate::load::hub::Hub,
    progress: &mut dyn FnMut(crate::load::hub::Progress),
) -> Result<Vec<(String, Vec<u8>)>> {
    use crate::load::ModelSource;
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e));
    match source {
        ModelSource::Gguf(p) => Ok(vec![(p.display().to_string(), read(p)?)]),
        ModelSource::HfDir(dir) => {
            let mut out = vec![("config.json".to_string(), read(&dir.join("config.json"))?)];
            let names = if dir.join("model.safetensors").exists() {
                vec!["model.safetensors".to_string()]
            } else {
                let index = read(&dir.join("model.safetensors.index.json"))?;
                let names = shard_names("model.safetensors.index.json", &index)?;
                out.push(("model.safetensors.index.json".to_string(), index));
                names
            };
            for n in names.iter().map(String::as_str).chain(TOKENIZER_FILES) {
                let p = dir.join(n);
                if TOKENIZER_FILES.contains(&n) && !p.exists() {
                    continue;
                }
                out.push((n.to_string(), read(&p)?));
            }
            Ok(out)
        }
        ModelSource::Hub(repo) => {
            let files = crate::load::hub::fetch_model(hub, repo, progress).await?;
            Ok(files.files.into_iter().collect())
        }
    }
}
