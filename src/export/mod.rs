//! Results out, as bytes (the browser hands them to a download; natively they go to files):
//! a PEFT LoRA adapter, and the merged model as a Hugging Face folder or a GGUF file.

pub mod gguf;
pub mod merged;
pub mod peft;

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::error::{Error, Result};

/// A safetensors file of F32 tensors `(name, shape, values)`, with `{"format": "pt"}`
/// metadata as transformers and PEFT write it.
pub fn safetensors_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Weights(format!("writing safetensors: {e}")))
}
