//! Compact frozen weights: a GGUF (or f16/bf16) tensor kept in its encoded form, repacked
//! so that a WGSL kernel reads it with aligned `u32` loads and decodes each element with
//! `wq_get` / `wq_get4` (shaders/quant.wgsl) to exactly the f32 of the host dequantizer
//! (src/load/dequant.rs, which matches gguf-py).
//!
//! # GPU layout
//!
//! A (rows, cols) row-major matrix; blocks run along a row (as in GGUF), so every row holds
//! `cols / QK` whole blocks and row `r` starts at word `r * row_words(cols)`. Words are
//! little-endian: byte `k` of a row is bits `8 (k % 4) .. 8 (k % 4) + 8` of word `k / 4`.
//! Within a row:
//!
//! | format | QK | row layout (nb = cols / QK blocks) | words per row |
//! |---|---|---|---|
//! | F32 | 1 | the f32 bits | cols |
//! | F16, BF16 | 1 | the halves, two per word (element 2i low), last word zero-padded | ceil(cols/2) |
//! | Q8_0 | 32 | the nb f16 scales `d` (two per word, padded), then per block qs: 32 i8 = 8 words | ceil(nb/2) + 8 nb |
//! | Q4_0 | 32 | the nb scales, then per block qs: 16 bytes = 4 words | ceil(nb/2) + 4 nb |
//! | Q5_0 | 32 | the nb scales, then per block qh (1 word) + qs (4 words) | ceil(nb/2) + 5 nb |
//! | Q4_1 | 32 | the GGUF blocks as they are: d, m (word 0), qs (4 words) | 5 nb |
//! | Q5_1 | 32 | the GGUF blocks as they are: d, m, qh, qs | 6 nb |
//! | Q4_K | 256 | the GGUF blocks as they are: d, dmin, scales (3 words), qs (32 words) | 36 nb |
//! | Q5_K | 256 | the GGUF blocks as they are: d, dmin, scales, qh (8 words), qs (32 words) | 44 nb |
//! | Q6_K | 256 | the nb scales `d`, then per block ql (32 words), qh (16), scales (4) | ceil(nb/2) + 52 nb |
//!
//! Why this layout: GGUF blocks of 34 (Q8_0), 18 (Q4_0), 22 (Q5_0) and 210 (Q6_K) bytes
//! are not whole words; padding each block would cost up to 11% (Q4_0). Moving each row's
//! f16 scales to the front of the row keeps every block's remaining bytes word-aligned at
//! a cost of at most 2 bytes per row. Formats whose blocks are already whole words stay
//! byte-identical to the file.

use half::{bf16, f16};

use crate::error::{Error, Result};

use super::dequant;

/// Declare `CompactFormat`, its per-format table and `FORMAT_WGSL` (the format codes as
/// WGSL constants) from one list, so Rust and WGSL cannot disagree on a code.
macro_rules! formats {
    ($($v:ident = $code:literal, $name:literal, $qk:literal, $gguf_bytes:literal;)*) => {
        /// The encoding of a compact tensor. The discriminant is the `WFMT` code the
        /// kernels are specialised on (`FMT_<NAME>` in shaders/quant.wgsl).
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum CompactFormat { $($v = $code),* }

        impl CompactFormat {
            pub const ALL: &'static [CompactFormat] = &[$(CompactFormat::$v),*];

            /// ggml's name of the type (`GgmlType::name`).
            pub fn name(self) -> &'static str {
                match self { $(CompactFormat::$v => $name),* }
            }

            /// Values per block (1 for the float formats).
            pub fn block_values(self) -> usize {
                match self { $(CompactFormat::$v => $qk),* }
            }

            /// Bytes per block in a GGUF file.
            pub fn gguf_block_bytes(self) -> usize {
                match self { $(CompactFormat::$v => $gguf_bytes),* }
            }
        }

        /// `const FMT_<NAME>: u32 = <code>u;` for every format: the first include of a
        /// kernel that reads a compact operand (see `QUANT_INCLUDES`).
        pub const FORMAT_WGSL: &str = concat!(
            "// Compact weight format codes, written from CompactFormat (src/load/compact.rs).\n",
            $("const FMT_", stringify!($v), ": u32 = ", stringify!($code), "u;\n",)*
        );
    };
}

formats! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    BF16 = 2, "BF16", 1, 2;
    Q8_0 = 3, "Q8_0", 32, 34;
    Q4_0 = 4, "Q4_0", 32, 18;
    Q4_1 = 5, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q4_K = 8, "Q4_K", 256, 144;
    Q5_K = 9, "Q5_K", 256, 176;
    Q6_K = 10, "Q6_K", 256, 210;
}

/// The WGSL a kernel with a compact operand includes (`Kernel::includes`): the format
/// codes, then the dequantizers. The kernel itself declares `wq` and gets `WFMT` through
/// its constants (see `compact_kernels!`).
pub const QUANT_INCLUDES: &[&str] =
    &[FORMAT_WGSL, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/quant.wgsl"))];

impl CompactFormat {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_name(name: &str) -> Option<CompactFormat> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Where the f16 scales are moved to the front of each row (see the module docs), the
    /// byte offset of `d` inside a GGUF block.
    fn front_scale(self) -> Option<usize> {
        match self {
            CompactFormat::Q8_0 | CompactFormat::Q4_0 | CompactFormat::Q5_0 => Some(0),
            CompactFormat::Q6_K => Some(208),
            _ => None,
        }
    }

    /// The 32-bit words one row of `cols` values takes on the GPU (`cols` a multiple of
    /// `block_values`).
    pub fn row_words(self, cols: usize) -> usize {
        let nb = cols / self.block_values();
        match self {
            CompactFormat::F32 => cols,
            CompactFormat::F16 | CompactFormat::BF16 => cols.div_ceil(2),
            _ => match self.front_scale() {
                Some(_) => nb.div_ceil(2) + nb * (self.gguf_block_bytes() - 2) / 4,
                None => nb * self.gguf_block_bytes() / 4,
            },
        }
    }

    /// Refuse a (rows, cols) shape this format cannot hold, naming the tensor.
    pub fn check_shape(self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let qk = self.block_values();
        if !cols.is_multiple_of(qk) {
            return Err(Error::Weights(format!(
                "tensor `{name}` ({rows} x {cols}) cannot be stored as {}: its rows of {cols} values are not whole {qk}-value blocks",
                self.name()
            )));
        }
        if rows.checked_mul(self.row_words(cols)).and_then(|w| w.checked_mul(4)).is_none() {
            return Err(Error::Weights(format!("tensor `{name}` ({rows} x {cols}) is too large")));
        }
        Ok(())
    }
}

/// A frozen weight in its compact GPU layout (module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactTensor {
    pub format: CompactFormat,
    pub rows: usize,
    pub cols: usize,
    /// rows * format.row_words(cols) words.
    pub words: Vec<u32>,
}

/// Bytes a (rows, cols) tensor of `format` takes on the GPU (its `words`), for the memory
/// estimate.
pub fn gpu_bytes(format: CompactFormat, rows: usize, cols: usize) -> u64 {
    rows as u64 * format.row_words(cols) as u64 * 4
}

fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl CompactTensor {
    /// Repack a GGUF tensor's raw bytes (`format`'s GGUF encoding of a (rows, cols)
    /// row-major matrix) into the GPU layout. `name` is for messages.
    pub fn from_gguf(name: &str, format: CompactFormat, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        format.check_shape(name, rows, cols)?;
        let row_bytes = cols / format.block_values() * format.gguf_block_bytes();
        if bytes.len() as u128 != rows as u128 * row_bytes as u128 {
            return Err(Error::Weights(format!(
                "tensor `{name}`: {} bytes for {rows} x {cols} {} (expected {})",
                bytes.len(),
                format.name(),
                rows as u128 * row_bytes as u128
            )));
        }
        let rw = format.row_words(cols);
        let mut words = Vec::with_capacity(rows * rw);
        for row in bytes.chunks_exact(row_bytes.max(1)).take(rows) {
            let start = words.len();
            match format {
                CompactFormat::F32 => words.extend(row.chunks_exact(4).map(word)),
                CompactFormat::F16 | CompactFormat::BF16 => {
                    words.extend(row.chunks(4).map(|c| {
                        let lo = u16::from_le_bytes([c[0], c[1]]) as u32;
                        let hi = if c.len() == 4 { u16::from_le_bytes([c[2], c[3]]) as u32 } else { 0 };
                        lo | hi << 16
                    }));
                }
                _ => match format.front_scale() {
                    None => words.extend(row.chunks_exact(4).map(word)),
                    Some(at) => {
                        let bb = format.gguf_block_bytes();
                        let scales: Vec<u32> =
                            row.chunks_exact(bb).map(|b| u16::from_le_bytes([b[at], b[at + 1]]) as u32).collect();
                        words.extend(scales.chunks(2).map(|s| s[0] | s.get(1).copied().unwrap_or(0) << 16));
                        for b in row.chunks_exact(bb) {
                            let rest: Vec<u8> = b[..at].iter().chain(&b[at + 2..]).copied().collect();
                            words.extend(rest.chunks_exact(4).map(word));
                        }
                    }
                },
            }
            debug_assert_eq!(words.len() - start, rw);
        }
        // Zero-sized rows still make `rows` rows of nothing.
        words.resize(rows * rw, 0);
        Ok(CompactTensor { format, rows, cols, words })
    }

    /// A tensor of a GGUF file (its info and raw bytes, `Gguf::tensor_bytes`) in the GPU
    /// layout: a matrix as its (rows, cols) PyTorch shape, a vector as one row. A type
    /// without a compact form, or more than two dimensions, is a typed error naming it.
    pub fn from_gguf_tensor(info: &super::gguf::TensorInfo, bytes: &[u8]) -> Result<Self> {
        let format = CompactFormat::from_name(info.ty.name).ok_or_else(|| {
            Error::Weights(format!("tensor `{}` has type {}, which has no compact form", info.name, info.ty.name))
        })?;
        let (rows, cols) = match info.shape()[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            ref s => return Err(Error::Weights(format!("tensor `{}` has shape {s:?}: not a matrix", info.name))),
        };
        Self::from_gguf(&info.name, format, rows, cols, bytes)
    }

    /// Quantize (or round) an f32 (rows, cols) matrix into `format`: the GGUF bytes of
    /// `quantize::quantize`, repacked.
    pub fn quantize(name: &str, format: CompactFormat, rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        format.check_shape(name, rows, cols)?;
        if values.len() as u128 != rows as u128 * cols as u128 {
            return Err(Error::Weights(format!("tensor `{name}`: {} values for {rows} x {cols}", values.len())));
        }
        let bytes = super::quantize::quantize(format, values)
            .ok_or_else(|| Error::Weights(format!("tensor `{name}`: no quantizer for {}", format.name())))?;
        Self::from_gguf(name, format, rows, cols, &bytes)
    }

    /// Bytes on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.words.len() as u64 * 4
    }

    /// The rows reordered: row i of the result is row `order[i]` of this tensor (rows are
    /// whole blocks, so a permutation of rows, such as undoing llama.cpp's RoPE order,
    /// moves words without touching a value). `order` must be a permutation of the rows.
    pub fn permute_rows(&self, order: &[usize]) -> CompactTensor {
        debug_assert_eq!(order.len(), self.rows);
        let w = self.format.row_words(self.cols);
        let words = order.iter().flat_map(|&r| self.words[r * w..(r + 1) * w].iter().copied()).collect();
        CompactTensor { words, ..self.clone() }
    }

    /// The GGUF bytes this tensor was packed from (the inverse of `from_gguf`).
    pub fn to_gguf(&self) -> Vec<u8> {
        let f = self.format;
        let rw = f.row_words(self.cols);
        let mut out = Vec::new();
        for r in 0..self.rows {
            let row = &self.words[r * rw..(r + 1) * rw];
            let bytes: Vec<u8> = row.iter().flat_map(|w| w.to_le_bytes()).collect();
            match f {
                CompactFormat::F32 => out.extend(&bytes),
                CompactFormat::F16 | CompactFormat::BF16 => out.extend(&bytes[..2 * self.cols]),
                _ => match f.front_scale() {
                    None => out.extend(&bytes),
                    Some(at) => {
                        let nb = self.cols / f.block_values();
                        let rest = f.gguf_block_bytes() - 2;
                        let body = &bytes[4 * nb.div_ceil(2)..];
                        for b in 0..nb {
                            let q = &body[b * rest..(b + 1) * rest];
                            out.extend(&q[..at]);
                            out.extend(&bytes[2 * b..2 * b + 2]);
                            out.extend(&q[at..]);
                        }
                    }
                },
            }
        }
        out
    }

    /// The host dequantizer's f32 values (row-major), via the GGUF bytes.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_gguf(self.format, &self.to_gguf())
    }
}

/// src/load/dequant.rs on `format`'s GGUF bytes (whole blocks).
pub fn dequantize_gguf(format: CompactFormat, bytes: &[u8]) -> Vec<f32> {
    let f: fn(&[u8]) -> Vec<f32> = match format {
        CompactFormat::F32 => dequant::f32_le,
        CompactFormat::F16 => dequant::f16_le,
        CompactFormat::BF16 => dequant::bf16_le,
        CompactFormat::Q8_0 => dequant::q8_0,
        CompactFormat::Q4_0 => dequant::q4_0,
        CompactFormat::Q4_1 => dequant::q4_1,
        CompactFormat::Q5_0 => dequant::q5_0,
        CompactFormat::Q5_1 => dequant::q5_1,
        CompactFormat::Q4_K => dequant::q4_k,
        CompactFormat::Q5_K => dequant::q5_k,
        CompactFormat::Q6_K => dequant::q6_k,
    };
    f(bytes)
}

/// f32 -> f16 / bf16 bytes (round to nearest even, as numpy's and PyTorch's casts).
pub fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
}

pub fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_words_match_the_documented_layout() {
        use CompactFormat::*;
        // One row of 3 blocks (odd, so the scale words are padded) per format.
        let want = [
            (F32, 3, 3),
            (F16, 3, 2),
            (BF16, 3, 2),
            (Q8_0, 96, 2 + 24),
            (Q4_0, 96, 2 + 12),
            (Q4_1, 96, 15),
            (Q5_0, 96, 2 + 15),
            (Q5_1, 96, 18),
            (Q4_K, 768, 108),
            (Q5_K, 768, 132),
            (Q6_K, 768, 2 + 156),
        ];
        for (f, cols, words) in want {
            assert_eq!(f.row_words(cols), words, "{f:?}");
        }
    }

    #[test]
    fn format_codes_reach_wgsl() {
        for f in CompactFormat::ALL {
            assert!(FORMAT_WGSL.contains(&format!("const FMT_{}: u32 = {}u;", f.name(), f.code())), "{f:?}");
        }
    }

    #[test]
    fn repack_round_trips_and_refuses_bad_shapes() {
        let mut rng = crate::rng::Rng::new(3);
        for &f in CompactFormat::ALL {
            let cols = f.block_values() * 3;
            let rows = 5;
            let n = rows * cols / f.block_values() * f.gguf_block_bytes();
            let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
            let t = CompactTensor::from_gguf("w", f, rows, cols, &bytes).unwrap();
            assert_eq!(t.words.len(), rows * f.row_words(cols));
            assert_eq!(t.to_gguf(), bytes, "{f:?}");
            if f.block_values() > 1 {
                let e = CompactTensor::from_gguf("blk.0.w", f, 1, cols + 1, &bytes).unwrap_err();
                assert!(e.to_string().contains("blk.0.w"), "{e}");
            }
            let e = CompactTensor::from_gguf("w", f, rows + 1, cols, &bytes).unwrap_err();
            assert!(matches!(e, Error::Weights(_)), "{e}");
        }
    }
}
