//! Safetensors through the `safetensors` crate (which validates the header, offsets and
//! dtypes), with the dtype conversion and shape checks training needs.

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

pub struct File<'a> {
    name: String,
    st: SafeTensors<'a>,
}

pub struct TensorRef<'a> {
    file: &'a str,
    name: String,
    view: safetensors::tensor::TensorView<'a>,
}

impl<'a> File<'a> {
    pub fn parse(name: &str, bytes: &'a [u8]) -> Result<File<'a>> {
        check_offsets(name, bytes)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Weights(format!("{name}: {e}")))?;
        Ok(File { name: name.to_string(), st })
    }

    /// The file name given to [`File::parse`] (every error message starts with it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of the tensors in the file, in no particular order.
    pub fn names(&self) -> Vec<&str> {
        self.st.names()
    }

    /// The tensor `name`, also under GPT-2's older unprefixed names (`h.0...` for
    /// `transformer.h.0...`) that the original checkpoints use.
    pub fn find(&self, name: &str) -> Option<TensorRef<'_>> {
        let alt = name.strip_prefix("transformer.");
        [Some(name), alt]
            .into_iter()
            .flatten()
            .find_map(|n| self.st.tensor(n).ok().map(|view| TensorRef { file: &self.name, name: n.to_string(), view }))
    }
}

/// Refuse data offsets past the end of the data. The `safetensors` crate (0.7) checks that
/// offsets are contiguous and agree with shape x dtype, but adds the last offset to the
/// header length without a check: offsets summing to within 8 bytes of `usize::MAX` panic
/// on overflow (and wrap without overflow checks). Anything else malformed is left to the
/// crate, which reports it.
fn check_offsets(name: &str, bytes: &[u8]) -> Result<()> {
    let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return Ok(());
    };
    let Some(header) = usize::try_from(n).ok().and_then(|n| bytes.get(8..8usize.checked_add(n)?)) else {
        return Ok(());
    };
    let data_len = (bytes.len() - 8 - header.len()) as u64;
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header) else {
        return Ok(());
    };
    for (tensor, info) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array()).map(|o| o.as_slice()).unwrap_or(&[]);
        if offsets.iter().filter_map(|o| o.as_u64()).any(|o| o > data_len) {
            return Err(Error::Weights(format!(
                "{name}: tensor `{tensor}` has data_offsets {} past the end of the data ({data_len} bytes)",
                serde_json::Value::from(offsets.to_vec())
            )));
        }
    }
    Ok(())
}

impl TensorRef<'_> {
    /// The shape stored in the file.
    pub fn shape(&self) -> &[usize] {
        self.view.shape()
    }

    /// The compact format of the stored dtype, when it has one other than f32 (F16, BF16).
    pub fn compact_format(&self) -> Option<super::compact::CompactFormat> {
        match self.view.dtype() {
            Dtype::F16 => Some(super::compact::CompactFormat::F16),
            Dtype::BF16 => Some(super::compact::CompactFormat::BF16),
            _ => None,
        }
    }

    /// An f16/bf16 matrix as it is stored, in the GPU's compact layout (GGUF's F16/BF16
    /// encoding is the same little-endian halves), after checking the shape.
    pub fn to_compact(&self, shape: &[usize]) -> Result<super::compact::CompactTensor> {
        let format = self.compact_format().ok_or_else(|| {
            Error::Weights(format!(
                "{}: tensor `{}` ({:?}) has no compact form",
                self.file,
                self.name,
                self.view.dtype()
            ))
        })?;
        match (self.view.shape(), shape) {
            (got, [r, c]) if got == shape => {
                super::compact::CompactTensor::from_gguf(&self.name, format, *r, *c, self.view.data())
            }
            (got, _) => Err(Error::Weights(format!(
                "{}: tensor `{}` has shape {got:?}, the config implies {shape:?}",
                self.file, self.name
            ))),
        }
    }

    /// The values as f32, after checking the shape.
    pub fn to_f32(&self, shape: &[usize]) -> Result<Vec<f32>> {
        if self.view.shape() != shape {
            return Err(Error::Weights(format!(
                "{}: tensor `{}` has shape {:?}, the config implies {:?}",
                self.file,
                self.name,
                self.view.shape(),
                shape
            )));
        }
        let d = self.view.data();
        Ok(match self.view.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::Weights(format!(
                    "{}: tensor `{}` has dtype {other:?}; F32, F16 and BF16 are supported",
                    self.file, self.name
                )))
            }
        })
    }
}
