//! The LoRA model merged into its base: W' = W + s * B A for every adapted layer
//! (GPT-2's Conv1D keeps (in, out), so there W' = W + s * (B A)^T), written as a Hugging
//! Face folder (`config.json` + `model.safetensors`, F32) with the base's tensor names.

use super::safetensors_f32;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::lora::linears;
use crate::model::{Model, Pid};
use crate::ops::matmul::WeightLayout;

/// A model folder's two files.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub config_json: String,
    pub safetensors: Vec<u8>,
}

/// W' = W + s B A in W's layout, B A accumulated in f64 and the sum rounded once.
pub fn merge_weight(
    w: &[f32],
    a: &[f32],
    b: &[f32],
    scale: f32,
    fan_in: usize,
    fan_out: usize,
    layout: WeightLayout,
) -> Vec<f32> {
    let r = a.len() / fan_in;
    let mut out = w.to_vec();
    for o in 0..fan_out {
        for i in 0..fan_in {
            let d: f64 = (0..r).map(|k| b[o * r + k] as f64 * a[k * fan_in + i] as f64).sum();
            let at = match layout {
                WeightLayout::OutIn => o * fan_in + i,
                WeightLayout::InOut => i * fan_out + o,
            };
            out[at] = (w[at] as f64 + scale as f64 * d) as f32;
        }
    }
    out
}

/// The base parameters of `model` (every parameter but the LoRA A and B), in order.
pub fn base_params(model: &Model) -> Vec<Pid> {
    let lora = model.lora_params();
    (0..model.params.specs.len()).filter(|&i| !lora.iter().any(|(_, a, b)| *a == i || *b == i)).collect()
}

/// The current values of base parameter `p`, its adapter merged in (W + s B A) when the
/// layer has one.
pub async fn merged_param(gpu: &Gpu, model: &Model, p: Pid) -> Result<Vec<f32>> {
    let ps = &model.params;
    let v = ps.read(gpu, p).await?;
    match linears(&model.tree).into_iter().find(|l| l.w == p && l.lora.is_some()) {
        Some(l) => {
            let lp = l.lora.as_ref().unwrap();
            let (a, b) = (ps.read(gpu, lp.a).await?, ps.read(gpu, lp.b).await?);
            Ok(merge_weight(&v, &a, &b, lp.scale, l.fan_in, l.fan_out, l.layout))
        }
        None => Ok(v),
    }
}

/// Every base tensor of `model` (adapted weights merged) under its HF name, with the
/// base's `config.json` text passed through.
pub async fn export_merged(gpu: &Gpu, model: &Model, config_json: &str) -> Result<ModelFiles> {
    let mut tensors = Vec::new();
    for p in base_params(model) {
        let spec = &model.params.specs[p];
        tensors.push((spec.name.clone(), spec.shape.clone(), merged_param(gpu, model, p).await?));
    }
    Ok(ModelFiles { config_json: config_json.to_string(), safetensors: safetensors_f32(&tensors)? })
}
