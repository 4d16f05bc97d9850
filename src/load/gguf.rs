//! GGUF files (llama.cpp's model format), versions 2 and 3, read from bytes.
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! then the metadata (key string, value type u32, value), then one info per tensor (name
//! string, dimension count u32, dimensions u64 innermost first, ggml type u32, data offset
//! u64), padding to `general.alignment` (default 32), and the tensor data, each tensor at
//! its offset from the start of the data section. A string is a u64 byte length and UTF-8
//! bytes; an array is an element type u32, a u64 count and the elements (arrays may nest).
//! Version 1 used u32 counts and lengths and is refused; version 3 only added big-endian
//! files, which are refused too (their version reads as 0x03000000 here).
//!
//! Every count, length and offset is checked against the bytes that remain before anything
//! is allocated, so a corrupt or hostile file gives an [`Error::Weights`] naming the file
//! and what is wrong, never a panic or a huge allocation.

use std::collections::HashMap;

use super::dequant;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are refused (no real file nests at all beyond 1).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// A ggml tensor type: its GGUF id, name, and block size (values, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block_values: usize,
    pub block_bytes: usize,
}

/// Every type ggml defines (as of gguf-py 0.19), so files that carry a type this crate
/// cannot decode still parse; decoding such a tensor is what fails.
const GGML_TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

/// The types [`Gguf::dequantize`] decodes.
pub const SUPPORTED_TYPES: &[&str] =
    &["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().find(|t| t.0 == id).map(|&(id, name, block_values, block_bytes)| GgmlType {
            id,
            name,
            block_values,
            block_bytes,
        })
    }
    pub fn by_name(name: &str) -> Option<GgmlType> {
        GGML_TYPES.iter().find(|t| t.1 == name).and_then(|t| GgmlType::from_id(t.0))
    }
    pub fn supported(&self) -> bool {
        SUPPORTED_TYPES.contains(&self.name)
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A metadata array, stored by element type (a vocabulary is 50k-150k strings).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

// GGUF value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// The fewest bytes one value of a type takes (an empty string is its 8-byte length; an
/// empty array its 4-byte type and 8-byte count).
fn min_size(ty: u32) -> Option<usize> {
    Some(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 | T_STRING => 8,
        T_ARRAY => 12,
        _ => return None,
    })
}

impl Value {
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(x as u64),
            Value::U16(x) => Some(x as u64),
            Value::U32(x) => Some(x as u64),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
    /// Any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x as f64),
            Value::F64(x) => Some(x),
            Value::I8(x) => Some(x as f64),
            Value::I16(x) => Some(x as f64),
            Value::I32(x) => Some(x as f64),
            Value::I64(x) => Some(x as f64),
            _ => self.as_u64().map(|x| x as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// GGUF's name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Integer elements of any width as i64 (None for other element types, or a u64
    /// beyond i64).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I64(v) => v.clone(),
            Array::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            _ => return None,
        })
    }
    /// Number elements as f32 (None for strings, bools and nested arrays).
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        Some(match self {
            Array::F32(v) => v.clone(),
            Array::F64(v) => v.iter().map(|&x| x as f32).collect(),
            _ => self.to_i64s()?.into_iter().map(|x| x as f32).collect(),
        })
    }
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's info. `dims` is ggml's `ne`: innermost (contiguous) first, so a PyTorch
/// tensor of shape (rows, cols) has `dims = [cols, rows]`.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
    pub n_values: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file; tensor data stays in the borrowed bytes until decoded.
#[derive(Debug)]
pub struct Gguf<'a> {
    /// The file's name, for messages.
    pub file: String,
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section.
    pub data_start: usize,
    bytes: &'a [u8],
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Reader<'a> {
    file: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::Weights(format!("{}: GGUF {what} (at byte {})", self.file, self.pos))
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated: {} needs {n} bytes but only {} remain",
                what(),
                self.remaining()
            )));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().unwrap())
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "string length {len} of {} runs past the end of the file ({} bytes remain)",
                what(),
                self.remaining()
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.err(format!("{} is not valid UTF-8: {e}", what())))
    }
    /// Check that `count` elements of at least `min` bytes each can fit in what remains.
    fn check_count(&self, count: u64, min: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let fits = count.checked_mul(min as u64).is_some_and(|n| n <= self.remaining() as u64);
        if !fits {
            return Err(self.err(format!(
                "{} count {count} cannot fit in the {} bytes that remain (each takes at least {min})",
                what(),
                self.remaining()
            )));
        }
        Ok(count as usize)
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String, depth: usize) -> Result<Value> {
        Ok(match ty {
            T_U8 => Value::U8(self.arr::<1>(what)?[0]),
            T_I8 => Value::I8(self.arr::<1>(what)?[0] as i8),
            T_U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            T_I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            T_U32 => Value::U32(u32::from_le_bytes(self.arr(what)?)),
            T_I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            T_U64 => Value::U64(u64::from_le_bytes(self.arr(what)?)),
            T_I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            T_F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            T_F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            T_BOOL => Value::Bool(self.bool(what)?),
            T_STRING => Value::String(self.string(what)?),
            T_ARRAY => Value::Array(self.array(what, depth)?),
            other => return Err(self.err(format!("{} has unknown value type {other}", what()))),
        })
    }

    fn bool(&mut self, what: &dyn Fn() -> String) -> Result<bool> {
        match self.arr::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("{} is a bool with byte value {b} (must be 0 or 1)", what()))),
        }
    }

    fn array(&mut self, what: &dyn Fn() -> String, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!("{} nests arrays deeper than {MAX_ARRAY_DEPTH}", what())));
        }
        let ty = self.u32(&|| format!("element type of {}", what()))?;
        let min = min_size(ty).ok_or_else(|| self.err(format!("{} has unknown element type {ty}", what())))?;
        let count = self.u64(&|| format!("element count of {}", what()))?;
        let n = self.check_count(count, min, &|| format!("array {}", what()))?;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.take((n * min) as u64, what)?;
                Array::$variant(raw.chunks_exact(min).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
            }};
        }
        Ok(match ty {
            T_U8 => Array::U8(self.take(n as u64, what)?.to_vec()),
            T_I8 => Array::I8(self.take(n as u64, what)?.iter().map(|&b| b as i8).collect()),
            T_U16 => fixed!(U16, u16),
            T_I16 => fixed!(I16, i16),
            T_U32 => fixed!(U32, u32),
            T_I32 => fixed!(I32, i32),
            T_U64 => fixed!(U64, u64),
            T_I64 => fixed!(I64, i64),
            T_F32 => fixed!(F32, f32),
            T_F64 => fixed!(F64, f64),
            T_BOOL => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.bool(&|| format!("element {i} of {}", what()))?);
                }
                Array::Bool(v)
            }
            T_STRING => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&|| format!("string {i} of {}", what()))?);
                }
                Array::String(v)
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array(&|| format!("array {i} of {}", what()), depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parse the header, metadata and tensor infos of `bytes` (`file` names it in errors),
    /// and check that every tensor's data lies inside the file, aligned, without overlap.
    pub fn parse(file: &str, bytes: &'a [u8]) -> Result<Gguf<'a>> {
        let mut r = Reader { file, b: bytes, pos: 0 };
        let magic = r.take(4, &|| "magic".into())?;
        if magic != MAGIC {
            return Err(r.err(format!("bad magic {magic:02x?} (expected \"GGUF\" = {MAGIC:02x?}): not a GGUF file")));
        }
        let version = r.u32(&|| "version".into())?;
        match version {
            2 | 3 => {}
            1 => return Err(r.err(
                "version 1 is not supported (it predates 64-bit counts; re-convert the model with a current llama.cpp)",
            )),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(r.err(format!("big-endian GGUF (version {}) is not supported", v.swap_bytes())))
            }
            v => return Err(r.err(format!("version {v} is not supported (2 and 3 are)"))),
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_kv = r.u64(&|| "metadata count".into())?;
        // A metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor
        // info at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
        let n_kv = r.check_count(n_kv, 13, &|| "metadata".into())?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&|| format!("key of metadata entry {i}"))?;
            let ty = r.u32(&|| format!("value type of `{key}`"))?;
            let value = r.value(ty, &|| format!("`{key}`"), 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, value));
        }
        let n_tensors = r.check_count(n_tensors, 24, &|| "tensor".into())?;
        let alignment = match metadata.get(meta_index.get("general.alignment").copied().unwrap_or(usize::MAX)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => {
                return Err(r.err(format!("`general.alignment` must be a uint32 power of two, found {v:?}")))
            }
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("name of tensor {i}"))?;
            let n_dims = r.u32(&|| format!("dimension count of tensor `{name}`"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(r.err(format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(r.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
            }
            let ty_id = r.u32(&|| format!("type of tensor `{name}`"))?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| r.err(format!("tensor `{name}` has unknown ggml type {ty_id}")))?;
            let offset = r.u64(&|| format!("data offset of tensor `{name}`"))?;
            // Bound the product of the non-zero dimensions, not just the value count: with
            // a 0 among them the count is 0 whatever the others are, and a shape of
            // [2^40, 2^40, 0] would overflow whoever multiplies it in another order (as
            // `shape().iter().product()` does).
            let span = dims
                .iter()
                .filter(|&&d| d != 0)
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= bytes.len() as u64 * 8)
                .ok_or_else(|| {
                    r.err(format!("tensor `{name}` has dimensions {dims:?}: too many values for the file"))
                })?;
            let n_values = if dims.contains(&0) { 0 } else { span };
            if dims.first().copied().unwrap_or(1) % ty.block_values as u64 != 0 {
                return Err(r.err(format!(
                    "tensor `{name}` ({}) has {} values per row, not a multiple of its block size {}",
                    ty.name,
                    dims.first().copied().unwrap_or(1),
                    ty.block_values
                )));
            }
            let n_bytes = n_values / ty.block_values as u64 * ty.block_bytes as u64;
            if offset % alignment != 0 {
                return Err(r.err(format!(
                    "tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.err(format!("duplicate tensor name `{name}`")));
            }
            let (Ok(n_values), Ok(n_bytes), Ok(_)) =
                (usize::try_from(n_values), usize::try_from(n_bytes), usize::try_from(span))
            else {
                return Err(r.err(format!("tensor `{name}` has dimensions {dims:?}: too large for this platform")));
            };
            tensors.push(TensorInfo { name, dims, ty, offset, n_values, n_bytes });
        }
        // The data section starts at the next multiple of the alignment. A file with no
        // tensors may end right after the infos.
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        if !tensors.is_empty() && data_start > bytes.len() as u64 {
            return Err(r.err(format!(
                "data section would start at byte {data_start}, past the end of the file ({} bytes)",
                bytes.len()
            )));
        }
        for t in &tensors {
            if t.offset.checked_add(t.n_bytes as u64).is_none_or(|end| end > data_len) {
                return Err(Error::Weights(format!(
                    "{file}: GGUF tensor `{}` data out of range: {} bytes ({} {:?}) at offset {} of a {data_len}-byte data section",
                    t.name, t.n_bytes, t.ty.name, t.dims, t.offset
                )));
            }
        }
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for w in order.windows(2) {
            if w[0].offset + w[0].n_bytes as u64 > w[1].offset {
                return Err(Error::Weights(format!(
                    "{file}: GGUF tensors `{}` (bytes {}..{}) and `{}` (from {}) overlap",
                    w[0].name,
                    w[0].offset,
                    w[0].offset + w[0].n_bytes as u64,
                    w[1].name,
                    w[1].offset
                )));
            }
        }
        Ok(Gguf {
            file: file.to_string(),
            version,
            alignment,
            metadata,
            tensors,
            data_start: data_start as usize,
            bytes,
            meta_index,
            tensor_index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (encoded) bytes of a tensor.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &'a [u8] {
        let start = self.data_start + t.offset as usize;
        &self.bytes[start..start + t.n_bytes]
    }

    /// A tensor's values as f32, in ggml order (innermost dimension fastest, i.e. row-major
    /// in [`TensorInfo::shape`]).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        dequantize(&self.file, t, self.tensor_bytes(t))
    }
}

/// Decode `bytes` (exactly `t.n_bytes` long) of tensor `t`.
pub fn dequantize(file: &str, t: &TensorInfo, bytes: &[u8]) -> Result<Vec<f32>> {
    let f: fn(&[u8]) -> Vec<f32> = match t.ty.name {
        "F32" => dequant::f32_le,
        "F16" => dequant::f16_le,
        "BF16" => dequant::bf16_le,
        "Q8_0" => dequant::q8_0,
        "Q4_0" => dequant::q4_0,
        "Q4_1" => dequant::q4_1,
        "Q5_0" => dequant::q5_0,
        "Q5_1" => dequant::q5_1,
        "Q4_K" => dequant::q4_k,
        "Q5_K" => dequant::q5_k,
        "Q6_K" => dequant::q6_k,
        other => {
            return Err(Error::Weights(format!(
                "{file}: tensor `{}` has type {other} (ggml type {}), which is not supported (supported: {})",
                t.name,
                t.ty.id,
                SUPPORTED_TYPES.join(", ")
            )))
        }
    };
    debug_assert_eq!(bytes.len(), t.n_bytes);
    let v = f(bytes);
    debug_assert_eq!(v.len(), t.n_values);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file with no metadata and one tensor info: `t`, `dims`, ggml type `ty`,
    /// offset 0, then zero padding to the alignment and `data` bytes of data.
    fn one_tensor(dims: &[u64], ty: u32, data: usize) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // metadata
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b't');
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.resize(b.len().next_multiple_of(DEFAULT_ALIGNMENT as usize) + data, 0);
        b
    }

    /// Found by the fuzz target (fuzz/fuzz_targets/gguf.rs): a tensor with a 0 dimension
    /// and two of 2^40 parsed as 0 values, and its `shape().iter().product()` then
    /// overflowed (a panic with overflow checks, a wrapped size without).
    #[test]
    fn zero_dimension_beside_huge_ones_is_refused() {
        let bytes = one_tensor(&[32, 0, 1 << 40, 1 << 40], 0, 0);
        let e = Gguf::parse("zero.gguf", &bytes).unwrap_err().to_string();
        assert!(e.contains("too many values for the file"), "{e}");
    }

    /// The fuzzer's own input: an unnamed tensor of dims [2^50, 0, ~2^62, ~2^51].
    #[test]
    fn fuzz_crash_zero_dim_product_overflow() {
        const CRASH: &[u8] = &[
            0x47, 0x47, 0x55, 0x46, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x51, 0x38, 0x5f, 0x31, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x49, 0x92, 0x24, 0x49, 0x92, 0x24, 0x49, 0x02, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x34, 0x01,
        ];
        assert_eq!(CRASH.len(), 146);
        if let Ok(g) = Gguf::parse("crash.gguf", CRASH) {
            for t in &g.tensors {
                let shape = t.shape();
                assert!(shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_some(), "{:?}", t.dims);
            }
        }
    }

    /// A tensor with a 0 dimension and sane other ones still parses, as 0 values.
    #[test]
    fn zero_dimension_tensor_parses_empty() {
        let bytes = one_tensor(&[32, 0, 4], 0, 0);
        let g = Gguf::parse("empty.gguf", &bytes).unwrap();
        assert_eq!(g.tensors[0].n_values, 0);
        assert_eq!(g.tensors[0].shape(), vec![4, 0, 32]);
        assert!(g.dequantize(&g.tensors[0]).unwrap().is_empty());
    }
}
