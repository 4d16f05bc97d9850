//! Compact frozen weights on the GPU (src/load/compact.rs's layout) and their expansion to
//! f32 (shaders/dequant.wgsl): a whole tensor or a gathered set of its rows, through the
//! in-kernel dequantizers (`wq_get`, `wq_get4` of shaders/quant.wgsl) that the matmul and
//! the embedding use, so this op is also their bit-for-bit test harness.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Gpu, Tensor, WG};
use crate::load::compact::{CompactFormat, CompactTensor};
use crate::{Error, Result};

/// Declare `[Kernel; 11]`, one per [`CompactFormat`] in code order (index with
/// `f.code()`), each `shaders/<name>.wgsl` built with `WFMT` = that code and the
/// dequantizers included, plus the kernel's own constants as in `kernel!`. Each format is
/// its own pipeline (`<name>@<FORMAT>`), so `switch (WFMT)` folds away.
#[macro_export]
macro_rules! compact_kernels {
    ($ident:ident, $name:literal $(, $c:ident)* $(,)?) => {
        pub const $ident: [$crate::gpu::Kernel; 11] = [
            $crate::compact_kernels!(@k $name, F32 $(, $c)*),
            $crate::compact_kernels!(@k $name, F16 $(, $c)*),
            $crate::compact_kernels!(@k $name, BF16 $(, $c)*),
            $crate::compact_kernels!(@k $name, Q8_0 $(, $c)*),
            $crate::compact_kernels!(@k $name, Q4_0 $(, $c)*),
            $crate::compact_kernels!(@k $name, Q4_1 $(, $c)*),
            $crate::compact_kernels!(@k $name, Q5_0 $(, $c)*),
            $crate::compact_kernels!(@k $name, Q5_1 $(, $c)*),
            $crate::compact_kernels!(@k $name, Q4_K $(, $c)*),
            $crate::compact_kernels!(@k $name, Q5_K $(, $c)*),
            $crate::compact_kernels!(@k $name, Q6_K $(, $c)*),
        ];
    };
    (@k $name:literal, $f:ident $(, $c:ident)*) => {
        $crate::gpu::Kernel {
            name: concat!($name, "@", stringify!($f)),
            file: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
            consts: &[("WFMT", $crate::load::compact::CompactFormat::$f as u32) $(, (stringify!($c), $c))*],
            includes: $crate::load::compact::QUANT_INCLUDES,
            enable: "",
        }
    };
}

compact_kernels!(DEQUANT, "dequant", HAS_IDS);

const HAS_IDS: u32 = 1;

/// A compact tensor on the GPU: `words` is `CompactTensor::words` (u32, rows *
/// format.row_words(cols)), bound as `wq` by the kernels that read it.
#[derive(Clone, Debug)]
pub struct CompactWeight {
    pub format: CompactFormat,
    pub rows: usize,
    pub cols: usize,
    pub words: Tensor,
}

impl CompactWeight {
    pub fn upload(gpu: &Gpu, label: &str, t: &CompactTensor) -> Result<CompactWeight> {
        Ok(CompactWeight { format: t.format, rows: t.rows, cols: t.cols, words: gpu.upload_u32(label, &t.words)? })
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.words.bytes()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    flags: u32,
    pad: u32,
}

/// out(n, cols) = f32 rows of `w`: row i is `w[ids[i]]` when `ids` (u32, n) is given, else
/// `w[i]` (n <= w.rows). `vec4` reads 4 columns per thread (`wq_get4`; cols % 4 == 0),
/// otherwise one (`wq_get`); both give the host dequantizer's bits. Ids must be < w.rows
/// (an id past the end reads whatever robust buffer access returns, never out of bounds).
pub fn dequant_rows(
    enc: &mut Encoder,
    w: &CompactWeight,
    ids: Option<&Tensor>,
    out: &Tensor,
    n: usize,
    vec4: bool,
) -> Result<()> {
    let bad = |m: String| Err(Error::Usage(format!("dequant_rows ({:?} {} x {}): {m}", w.format, w.rows, w.cols)));
    if out.len < n * w.cols {
        return bad(format!("output of {} elements for {n} rows", out.len));
    }
    match ids {
        Some(t) if t.len < n => return bad(format!("{} ids for {n} rows", t.len)),
        None if n > w.rows => return bad(format!("{n} rows requested without ids")),
        _ => {}
    }
    if vec4 && !w.cols.is_multiple_of(4) {
        return bad("the 4-wide path needs cols % 4 == 0".into());
    }
    if w.format.check_shape("dequant_rows", w.rows, w.cols).is_err()
        || w.words.len < w.rows * w.format.row_words(w.cols)
    {
        return bad(format!("{} words do not hold the tensor", w.words.len));
    }
    let dummy = enc.gpu().dummy.clone();
    let p = Params { rows: n as u32, cols: w.cols as u32, flags: if ids.is_some() { HAS_IDS } else { 0 }, pad: 0 };
    let (entry, threads) = if vec4 { ("dequant_rows4", n * w.cols / 4) } else { ("dequant_rows", n * w.cols) };
    let src_bytes = n as u64 * w.format.row_words(w.cols) as u64 * 4;
    let cost = Cost { flops: (n * w.cols) as u64, bytes: src_bytes + 4 * (n * w.cols) as u64 };
    enc.dispatch(
        &DEQUANT[w.format.code() as usize],
        entry,
        &p,
        &[Arg::R(ids.unwrap_or(&dummy)), Arg::R(&w.words), Arg::W(out)],
        grid_1d(threads, WG),
        cost,
    );
    Ok(())
}
