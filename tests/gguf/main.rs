//! GGUF: the reader on synthetic files (every metadata type, versions 2 and 3, every kind of
//! bad input) and on a file gguf-py wrote; dequantization of every supported type against
//! gguf-py; the llama / qwen2 / gpt2 mapping on the tiny transformers fixtures converted to
//! GGUF the way llama.cpp's converter does; and the real default model (SmolLM2-135M Q4_1,
//! its tokenizer and chat template) against transformers' own GGUF loading. One binary,
//! one device. Synthetic files are written with the exporter's GGUF writer.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;

mod dequant;
mod mapping;
mod quantize;
mod reader;
mod smollm2;

use std::collections::HashMap;
use std::path::PathBuf;

use common::block;
use webtune::export::gguf::{write_gguf, write_header, RawTensor, TensorInfo};
use webtune::load::gguf::Value;
use webtune::train::{batch, Example, LossMode, Trainer};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn read_f32_safetensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32);
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

/// Logits (len, V) of every position of `ids`.
pub fn all_logits(t: &mut Trainer, ids: &[u32]) -> Vec<f32> {
    let e = Example::prompt_answer(ids.to_vec(), 1, "logits");
    let mut mb = batch::plan(std::slice::from_ref(&e), LossMode::AllTokens, 1).unwrap().remove(0);
    mb.loss_rows = (0..ids.len() as u32).collect();
    mb.targets = vec![0; ids.len()];
    mb.weights = vec![0.0; ids.len()];
    block(t.logits(&mb)).unwrap()
}

// ---- synthetic files, through the exporter's writer ---------------------------------------

pub struct TensorSpec {
    pub raw: RawTensor,
    /// Forced offset (relative to the data section); None lays tensors out in order.
    pub offset: Option<u64>,
}

pub fn tensor(name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> TensorSpec {
    TensorSpec { raw: RawTensor { name: name.into(), dims: dims.to_vec(), ty, data }, offset: None }
}

pub fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> TensorSpec {
    tensor(name, dims, 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A GGUF file: header, metadata, tensor infos, padding to `alignment`, data. Tensors are
/// laid out in order unless an offset is forced (then as forced, even a misaligned,
/// overlapping or absurd one: data at an absurd offset is not written, the info alone is
/// the test).
pub fn build(version: u32, alignment: u64, meta: &[(&str, Value)], tensors: &[TensorSpec]) -> Vec<u8> {
    if tensors.iter().all(|t| t.offset.is_none()) {
        let raw: Vec<RawTensor> = tensors.iter().map(|t| t.raw.clone()).collect();
        return write_gguf(version, alignment, meta, &raw);
    }
    let mut at = 0u64;
    let mut infos = Vec::new();
    for t in tensors {
        let off = t.offset.unwrap_or(at.next_multiple_of(alignment));
        if off < 1 << 20 {
            at = at.max(off + t.raw.data.len() as u64);
        }
        infos.push(TensorInfo { name: t.raw.name.clone(), dims: t.raw.dims.clone(), ty: t.raw.ty, offset: off });
    }
    let mut b = write_header(version, alignment, meta, &infos);
    let mut data = vec![0u8; at as usize];
    for (t, info) in tensors.iter().zip(&infos).filter(|(_, i)| i.offset < 1 << 20) {
        let off = info.offset as usize;
        data[off..off + t.raw.data.len()].copy_from_slice(&t.raw.data);
    }
    b.extend(data);
    b
}
