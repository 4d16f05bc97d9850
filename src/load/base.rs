//! How a LoRA run keeps its frozen base on the GPU (`train --base`, the page's "Base
//! precision"): the file's own compact form by default (GGUF blocks, f16/bf16 safetensors),
//! f32, or quantized on load into a GGUF block type. Full fine-tuning keeps f32 weights:
//! compactness is for what is frozen. One policy for both loaders.

use serde::{Deserialize, Serialize};

use super::compact::{CompactFormat, CompactTensor};
use crate::error::Result;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Base {
    /// GGUF block types and f16/bf16 tensors stay as the file has them; f32 stays f32.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    /// Q4_K where a row holds 256-value blocks, Q4_0 elsewhere (as llama.cpp falls back
    /// for shapes a K-quant cannot take, e.g. SmolLM2's 576-wide rows).
    #[serde(rename = "q4_k")]
    Q4K,
}

impl Base {
    pub const NAMES: &'static [&'static str] = &["auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"];

    /// The format a frozen (rows, cols) matrix is kept in, given the file's own format
    /// (`None`: f32, or a type with no compact form); `None` keeps it f32.
    pub fn format_for(self, rows: usize, cols: usize, file: Option<CompactFormat>) -> Option<CompactFormat> {
        use CompactFormat as F;
        let fits = |f: F| f.check_shape("", rows, cols).is_ok();
        let pick = |f: F| fits(f).then_some(f);
        match self {
            Base::Auto => file.filter(|&f| f != F::F32 && fits(f)),
            Base::F32 => None,
            Base::F16 => pick(F::F16),
            Base::Bf16 => pick(F::BF16),
            Base::Q8_0 => pick(F::Q8_0),
            Base::Q4_0 => pick(F::Q4_0),
            Base::Q4K => pick(F::Q4_K).or_else(|| pick(F::Q4_0)),
        }
    }

    /// The compact tensor in `format` (from `format_for`): the file's own bytes when it
    /// already has that format (`raw`), else the f32 values quantized.
    pub fn tensor(
        name: &str,
        format: CompactFormat,
        (rows, cols): (usize, usize),
        file: Option<CompactFormat>,
        raw: impl FnOnce() -> Result<CompactTensor>,
        values: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<CompactTensor> {
        if file == Some(format) {
            return raw();
        }
        CompactTensor::quantize(name, format, rows, cols, &values()?)
    }
}
