//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`, with PEFT's
//! key names (`base_model.model.<module>.lora_A.weight`, the adapter name `default`
//! stripped as `save_pretrained` does), in and out.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::safetensors_f32;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Arch, LoraConfig, Model};

/// An adapter folder's two files.
#[derive(Clone, Debug)]
pub struct AdapterFiles {
    pub config_json: String,
    pub safetensors: Vec<u8>,
}

/// The adapter of `model` (its current A and B) as PEFT saves it. `base_model` goes to
/// `base_model_name_or_path` (a hub id or a path).
pub async fn export_adapter(gpu: &Gpu, model: &Model, base_model: &str) -> Result<AdapterFiles> {
    let cfg = model.lora.as_ref().ok_or_else(|| Error::Adapter("the model has no LoRA adapter to export".into()))?;
    let mut tensors = Vec::new();
    for (_, a, b) in model.lora_params() {
        for p in [a, b] {
            let s = &model.params.specs[p];
            tensors.push((s.name.clone(), s.shape.clone(), model.params.read(gpu, p).await?));
        }
    }
    let mut targets = cfg.targets.clone();
    targets.sort();
    targets.dedup();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": alpha_json(cfg.alpha),
        "lora_dropout": decimal(cfg.dropout),
        "target_modules": targets,
        "use_rslora": cfg.rslora,
        "fan_in_fan_out": model.cfg.arch == Arch::Gpt2,
        "bias": "none",
        "use_dora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
        "inference_mode": true,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": null,
        "layers_pattern": null,
        "exclude_modules": null,
        "target_parameters": null,
        "lora_bias": false,
    });
    Ok(AdapterFiles {
        config_json: serde_json::to_string_pretty(&config).expect("JSON of plain values"),
        safetensors: safetensors_f32(&tensors)?,
    })
}

/// An f32 setting as the decimal a user typed: the shortest text that reads back as the
/// same f32 (`0.1`, not the f64 widening `0.10000000149011612`).
fn decimal(x: f32) -> Value {
    json!(x.to_string().parse::<f64>().expect("an f32's Display reads back"))
}

/// `lora_alpha` as PEFT writes it: an integer when whole (`8`), else as `decimal`.
fn alpha_json(x: f32) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        decimal(x)
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::Adapter(what.into())
}

/// The LoRA configuration of an `adapter_config.json`. Anything the engine does not
/// implement (DoRA, biases, per-layer ranks, regex targets, extra trained modules, ...)
/// is an error naming the field: an adapter is never loaded half-applied.
pub fn parse_adapter_config(json: &str) -> Result<LoraConfig> {
    let v: Value = serde_json::from_str(json).map_err(|e| bad(format!("adapter_config.json: {e}")))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    let peft_type = field("peft_type").and_then(|x| x.as_str()).unwrap_or("");
    if peft_type != "LORA" {
        return Err(bad(format!("adapter_config.json: peft_type `{peft_type}` is not supported (only LORA)")));
    }
    if let Some(t) = field("task_type").and_then(|x| x.as_str()) {
        if t != "CAUSAL_LM" {
            return Err(bad(format!("adapter_config.json: task_type `{t}` is not supported (only CAUSAL_LM)")));
        }
    }
    let rank = field("r").and_then(|x| x.as_u64()).ok_or_else(|| bad("adapter_config.json: `r` is missing"))? as usize;
    let alpha = field("lora_alpha")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| bad("adapter_config.json: `lora_alpha` is missing"))?;
    let dropout = field("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0);
    let rslora = field("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false);
    let targets = match field("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad("adapter_config.json: a target module is not a string")))
            .collect::<Result<Vec<_>>>()?,
        Some(Value::String(s)) => {
            return Err(bad(format!(
                "adapter_config.json: target_modules `{s}` is a regular expression; only a list of module names is supported"
            )))
        }
        _ => return Err(bad("adapter_config.json: `target_modules` is missing")),
    };
    // Features that would change the math if ignored.
    type Check = fn(&Value) -> bool;
    let unsupported: &[(&str, Check)] = &[
        ("use_dora", |x| x.as_bool() == Some(true)),
        ("bias", |x| x.as_str() != Some("none")),
        ("lora_bias", |x| x.as_bool() == Some(true)),
        ("modules_to_save", |x| x.as_array().is_none_or(|a| !a.is_empty())),
        ("rank_pattern", |x| x.as_object().is_none_or(|o| !o.is_empty())),
        ("alpha_pattern", |x| x.as_object().is_none_or(|o| !o.is_empty())),
        ("layers_to_transform", |_| true),
        ("exclude_modules", |x| x.as_array().is_none_or(|a| !a.is_empty())),
        ("target_parameters", |x| x.as_array().is_none_or(|a| !a.is_empty())),
        ("trainable_token_indices", |_| true),
        ("layer_replication", |_| true),
        ("use_qalora", |x| x.as_bool() == Some(true)),
        ("use_bdlora", |x| !x.is_null() && x.as_bool() != Some(false)),
        ("alora_invocation_tokens", |_| true),
    ];
    for (k, is_bad) in unsupported {
        if let Some(x) = field(k) {
            if is_bad(x) {
                return Err(bad(format!("adapter_config.json: `{k}` = {x} is not supported")));
            }
        }
    }
    let cfg = LoraConfig { rank, alpha: alpha as f32, dropout: dropout as f32, rslora, targets, seed: 0 };
    cfg.validate().map_err(|e| bad(format!("adapter_config.json: {e}")))?;
    Ok(cfg)
}

/// Load an adapter's tensors into `model`, which must have been built with the adapter's
/// configuration (`parse_adapter_config`): the ranks, scale and adapted layers must
/// agree, every tensor the model expects must be present with its shape, and no tensor
/// may be left over.
pub fn import_adapter(gpu: &Gpu, model: &Model, files: &AdapterFiles) -> Result<()> {
    let cfg = parse_adapter_config(&files.config_json)?;
    let have = model.lora.as_ref().ok_or_else(|| bad("the model was built without LoRA adapters"))?;
    if (cfg.rank, cfg.scale(), cfg.rslora) != (have.rank, have.scale(), have.rslora) {
        return Err(bad(format!(
            "adapter r={} alpha={} rslora={} differs from the model's r={} alpha={} rslora={}",
            cfg.rank, cfg.alpha, cfg.rslora, have.rank, have.alpha, have.rslora
        )));
    }
    let st = safetensors::SafeTensors::deserialize(&files.safetensors)
        .map_err(|e| bad(format!("adapter_model.safetensors: {e}")))?;
    let file = crate::load::safetensors::File::parse("adapter_model.safetensors", &files.safetensors)?;
    let mut left: BTreeSet<String> = st.names().into_iter().map(str::to_string).collect();
    let mut values = Vec::new();
    for (module, a, b) in model.lora_params() {
        if !cfg.matches(&module) {
            return Err(bad(format!("the model adapts `{module}` but the adapter's target_modules do not")));
        }
        for p in [a, b] {
            let spec = &model.params.specs[p];
            let t = file.find(&spec.name).ok_or_else(|| {
                bad(format!("adapter_model.safetensors lacks `{}` (shape {:?})", spec.name, spec.shape))
            })?;
            values.push((p, t.to_f32(&spec.shape).map_err(|e| bad(e.to_string()))?));
            left.remove(&spec.name);
        }
    }
    if let Some(extra) = left.into_iter().next() {
        return Err(bad(format!(
            "adapter_model.safetensors has `{extra}`, which matches no adapted layer of the model"
        )));
    }
    for (p, v) in values {
        gpu.write_f32(&model.params.weight(p), &v);
    }
    Ok(())
}
