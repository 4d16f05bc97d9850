//! RMSNorm (shaders/rmsnorm.wgsl), Llama/Qwen2 style, in f32.

use bytemuck::{Pod, Zeroable};

use super::bias;
use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, ACCUMULATE, WG};

crate::kernel!(RMSNORM, "rmsnorm", PLUS_ONE);

/// Params::flags bit: scale by (1 + w) (Gemma's RMSNorm) instead of w.
const PLUS_ONE: u32 = 2;

/// How the norm's weight scales the normalized row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// x * rstd * w (Llama, Qwen2, Qwen3).
    W,
    /// x * rstd * (1 + w) (Gemma 3, whose checkpoints store w as an offset from 1).
    OnePlusW,
}

impl Scale {
    fn flag(self) -> u32 {
        match self {
            Scale::W => 0,
            Scale::OnePlusW => PLUS_ONE,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    flags: u32,
    eps: f32,
    chunk: u32,
    _pad: [u32; 3],
}

/// y(rows, C) = x * rstd * w(C), rstd(rows) = 1 / sqrt(mean(x^2) + eps), saved for backward.
pub fn forward(enc: &mut Encoder, x: &Tensor, w: &Tensor, y: &Tensor, rstd: &Tensor, rows: usize, c: usize, eps: f32) {
    forward_scaled(enc, x, w, Scale::W, y, false, rstd, rows, c, eps)
}

/// `forward` with the weight applied as `scale` says; with `accumulate_y`, y (+)= the
/// normed rows (Gemma 3's post-norms, added to the residual stream already in y).
#[allow(clippy::too_many_arguments)]
pub fn forward_scaled(
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    scale: Scale,
    y: &Tensor,
    accumulate_y: bool,
    rstd: &Tensor,
    rows: usize,
    c: usize,
    eps: f32,
) {
    debug_assert!(x.len >= rows * c && w.len >= c && y.len >= rows * c && rstd.len >= rows);
    let flags = scale.flag() | if accumulate_y { ACCUMULATE } else { 0 };
    let p = Params { rows: rows as u32, c: c as u32, flags, eps, chunk: 0, _pad: [0; 3] };
    let (n, r) = ((rows * c) as u64, rows as u64);
    // x is read twice (sum of squares, then scale) and w once per row; y and rstd written.
    let cost = Cost { flops: 4 * n + 3 * r, bytes: 4 * (4 * n + 2 * r) };
    enc.dispatch(
        &RMSNORM,
        "rmsnorm_forward",
        &p,
        &[Arg::R(x), Arg::R(w), Arg::W(y), Arg::W(rstd)],
        grid_1d(rows, 1),
        cost,
    );
}

/// dx(rows, C) (+)= the input gradient, added when `accumulate_dx` (the residual stream's
/// gradient already there); dw(C) += sum over rows of dy * x * rstd, in two stages
/// through `scratch` (`bias::scratch_len(rows, c)`): partial sums over chunks of
/// `bias::ROW_CHUNK` rows, then their sum in order (one stage without scratch, or when
/// the rows fit one chunk).
pub fn backward(
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate_dx: bool,
    dw: Option<&Tensor>,
    scratch: Option<&Tensor>,
    rows: usize,
    c: usize,
) {
    backward_scaled(enc, x, w, Scale::W, rstd, dy, dx, accumulate_dx, dw, scratch, rows, c)
}

/// `backward` for a norm whose weight applies as `scale` says (dw is the same either way).
#[allow(clippy::too_many_arguments)]
pub fn backward_scaled(
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    scale: Scale,
    rstd: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate_dx: bool,
    dw: Option<&Tensor>,
    scratch: Option<&Tensor>,
    rows: usize,
    c: usize,
) {
    debug_assert!(x.len >= rows * c && dy.len >= rows * c && dx.len >= rows * c && rstd.len >= rows);
    let (n, r, c64) = ((rows * c) as u64, rows as u64, c as u64);
    let acc = accumulate_dx as u64;
    let flags = if accumulate_dx { ACCUMULATE } else { 0 } | scale.flag();
    let p = Params { rows: rows as u32, c: c as u32, flags, eps: 0.0, chunk: 0, _pad: [0; 3] };
    // Two passes over the row, each reading x, dy and w; dx read too when accumulating.
    let cost = Cost { flops: (7 + acc) * n + 3 * r, bytes: 4 * ((6 + acc) * n + r) };
    enc.dispatch(
        &RMSNORM,
        "rmsnorm_backward",
        &p,
        &[Arg::R(x), Arg::R(w), Arg::R(rstd), Arg::R(dy), Arg::W(dx)],
        grid_1d(rows, 1),
        cost,
    );
    if let Some(dw) = dw {
        debug_assert!(dw.len >= c);
        let chunks = bias::chunks(rows);
        let cost = Cost { flops: 3 * n + c64, bytes: 4 * (2 * n + r * c64.div_ceil(WG as u64) + 2 * c64) };
        let entry = "rmsnorm_backward_weight";
        let args = |dst| [Arg::R(x), Arg::R(rstd), Arg::R(dy), Arg::W(dst)];
        match scratch {
            Some(part) if chunks > 1 => {
                debug_assert!(part.len >= bias::scratch_len(rows, c));
                let p = Params { flags: 0, chunk: bias::ROW_CHUNK as u32, ..p };
                enc.dispatch(&RMSNORM, entry, &p, &args(part), bias::partial_grid(rows, c), cost);
                bias::finish(enc, part, chunks, c, dw, true);
            }
            _ => {
                let p = Params { flags: ACCUMULATE, chunk: rows.max(1) as u32, ..p };
                enc.dispatch(&RMSNORM, entry, &p, &args(dw), [c.div_ceil(WG as usize) as u32, 1, 1], cost);
            }
        }
    }
}
