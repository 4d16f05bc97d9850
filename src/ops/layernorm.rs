//! LayerNorm (shaders/layernorm.wgsl), GPT-2 style.

use bytemuck::{Pod, Zeroable};

use super::bias;
use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, ACCUMULATE, WG};

crate::kernel!(LAYERNORM, "layernorm", HAS_DW, HAS_DB, PARTIAL);

const HAS_DW: u32 = 2;
const HAS_DB: u32 = 4;
/// dw/db's first stage writes per-chunk partial sums (dw, db bound to the scratch's halves).
const PARTIAL: u32 = 8;

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

/// Elements from the scratch's start to the db half: the dw half rounded up to 64
/// elements, the 256-byte alignment of a binding's offset.
fn db_offset(rows: usize, c: usize) -> usize {
    (bias::chunks(rows) * c).next_multiple_of(64)
}

/// Elements of the scratch `backward` takes for dw and db of `rows` rows of C channels:
/// the partial sums of each, one after the other.
pub fn scratch_len(rows: usize, c: usize) -> usize {
    db_offset(rows, c) + bias::chunks(rows) * c
}

/// y(rows, C) = (x - mean) * rstd * w(C) + b(C); mean(rows) and rstd(rows) saved for
/// backward.
pub fn forward(
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    rows: usize,
    c: usize,
    eps: f32,
) {
    debug_assert!(x.len >= rows * c && w.len >= c && b.len >= c && y.len >= rows * c);
    debug_assert!(mean.len >= rows && rstd.len >= rows);
    let p = Params { rows: rows as u32, c: c as u32, flags: 0, eps, chunk: 0, _pad: [0; 3] };
    let (n, r) = ((rows * c) as u64, rows as u64);
    // x is read three times (mean, variance, output), w and b once per row.
    let cost = Cost { flops: 8 * n + 4 * r, bytes: 4 * (6 * n + 2 * r) };
    enc.dispatch(
        &LAYERNORM,
        "layernorm_forward",
        &p,
        &[Arg::R(x), Arg::R(w), Arg::R(b), Arg::W(y), Arg::W(mean), Arg::W(rstd)],
        grid_1d(rows, 1),
        cost,
    );
}

/// dx(rows, C) (+)= the input gradient, added when `accumulate_dx`; dw(C) += sum over rows
/// of dy * xhat, db(C) += sum over rows of dy: with `scratch` (`scratch_len(rows, c)`) in
/// two stages (partial sums over chunks of `bias::ROW_CHUNK` rows, then their sum in
/// order), in one without or when the rows fit one chunk.
pub fn backward(
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate_dx: bool,
    dw: Option<&Tensor>,
    db: Option<&Tensor>,
    scratch: Option<&Tensor>,
    rows: usize,
    c: usize,
) {
    debug_assert!(x.len >= rows * c && dy.len >= rows * c && dx.len >= rows * c);
    let (n, r, c64) = ((rows * c) as u64, rows as u64, c as u64);
    let acc = accumulate_dx as u64;
    let flags = if accumulate_dx { ACCUMULATE } else { 0 };
    let p = Params { rows: rows as u32, c: c as u32, flags, eps: 0.0, chunk: 0, _pad: [0; 3] };
    // Two passes over the row, each reading x, dy and w; dx read too when accumulating.
    let cost = Cost { flops: (11 + acc) * n + 2 * r, bytes: 4 * ((6 + acc) * n + 2 * r) };
    enc.dispatch(
        &LAYERNORM,
        "layernorm_backward",
        &p,
        &[Arg::R(x), Arg::R(w), Arg::R(mean), Arg::R(rstd), Arg::R(dy), Arg::W(dx)],
        grid_1d(rows, 1),
        cost,
    );
    if dw.is_none() && db.is_none() {
        return;
    }
    let flags = if dw.is_some() { HAS_DW } else { 0 } | if db.is_some() { HAS_DB } else { 0 };
    let cost = Cost { flops: 5 * n + 2 * c64, bytes: 4 * (2 * n + 2 * r * c64.div_ceil(WG as u64) + 4 * c64) };
    let entry = "layernorm_backward_weight";
    let chunks = bias::chunks(rows);
    match scratch {
        Some(s) if chunks > 1 => {
            debug_assert!(s.len >= scratch_len(rows, c));
            let (pw, pb) = (s.view(0, chunks * c), s.view(db_offset(rows, c), chunks * c));
            let p = Params { flags: PARTIAL, chunk: bias::ROW_CHUNK as u32, ..p };
            let args = [Arg::R(x), Arg::R(mean), Arg::R(rstd), Arg::R(dy), Arg::W(&pw), Arg::W(&pb)];
            enc.dispatch(&LAYERNORM, entry, &p, &args, bias::partial_grid(rows, c), cost);
            if let Some(dw) = dw {
                bias::finish(enc, &pw, chunks, c, dw, true);
            }
            if let Some(db) = db {
                bias::finish(enc, &pb, chunks, c, db, true);
            }
        }
        _ => {
            let p = Params { flags, chunk: rows.max(1) as u32, ..p };
            // An absent gradient binds the dummy, which the flags keep the kernel from touching.
            let dummy = &enc.gpu().dummy.clone();
            let args = [
                Arg::R(x),
                Arg::R(mean),
                Arg::R(rstd),
                Arg::R(dy),
                Arg::W(dw.unwrap_or(dummy)),
                Arg::W(db.unwrap_or(dummy)),
            ];
            enc.dispatch(&LAYERNORM, entry, &p, &args, [c.div_ceil(WG as usize) as u32, 1, 1], cost);
        }
    }
}
