//! Column sums over rows in two stages (shaders/bias.wgsl): the bias gradient, and the
//! second stage that every row reduction (RMSNorm's weight gradient, ...) shares.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Arg, Cost, Encoder, Tensor, ACCUMULATE, WG};

crate::kernel!(BIAS, "bias");

/// Rows per partial sum of a two-stage row reduction. Fixed (not chosen per device) so
/// the sum's order, and so its bits, are the same everywhere; small enough that a batch
/// of a few hundred rows already gives each column several workgroups.
pub const ROW_CHUNK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    flags: u32,
    chunk: u32,
}

/// Partial sums of `rows` rows: one per chunk of ROW_CHUNK rows.
pub fn chunks(rows: usize) -> usize {
    rows.div_ceil(ROW_CHUNK).max(1)
}

/// Elements of the scratch a row reduction of `rows` rows and `width` columns needs.
pub fn scratch_len(rows: usize, width: usize) -> usize {
    chunks(rows) * width
}

/// The grid of a first stage: columns across x, chunks across y.
pub fn partial_grid(rows: usize, n: usize) -> [u32; 3] {
    let ch = chunks(rows);
    assert!(ch <= 65535, "{rows} rows: more than 65535 chunks of {ROW_CHUNK}");
    [n.div_ceil(WG as usize) as u32, ch as u32, 1]
}

/// db(N) [+]= column sums of dy(M, N). With `scratch` (`scratch_len(m, n)` elements), in
/// two stages: partial sums over chunks of ROW_CHUNK rows, then their sum in chunk order.
/// Without, one thread per column sums every row (for callers with no scratch at hand).
pub fn backward(
    enc: &mut Encoder,
    m: usize,
    n: usize,
    dy: &Tensor,
    db: &Tensor,
    scratch: Option<&Tensor>,
    accumulate: bool,
) {
    let acc = if accumulate { ACCUMULATE } else { 0 };
    let cost = Cost { flops: (m * n) as u64, bytes: 4 * (m * n + 2 * n) as u64 };
    match scratch {
        Some(part) if chunks(m) > 1 => {
            debug_assert!(part.len >= scratch_len(m, n));
            let p = Params { m: m as u32, n: n as u32, flags: 0, chunk: ROW_CHUNK as u32 };
            enc.dispatch(&BIAS, "bias_partials", &p, &[Arg::R(dy), Arg::W(part)], partial_grid(m, n), cost);
            finish(enc, part, chunks(m), n, db, accumulate);
        }
        _ => {
            let p = Params { m: m as u32, n: n as u32, flags: acc, chunk: m.max(1) as u32 };
            let grid = [n.div_ceil(WG as usize) as u32, 1, 1];
            enc.dispatch(&BIAS, "bias_partials", &p, &[Arg::R(dy), Arg::W(db)], grid, cost);
        }
    }
}

/// out(N) [+]= the sum over `chunks` partial rows of part(chunks, N), in chunk order: the
/// second stage of a row reduction.
pub fn finish(enc: &mut Encoder, part: &Tensor, chunks: usize, n: usize, out: &Tensor, accumulate: bool) {
    debug_assert!(part.len >= chunks * n && out.len >= n);
    let p = Params { m: chunks as u32, n: n as u32, flags: if accumulate { ACCUMULATE } else { 0 }, chunk: 0 };
    let cost = Cost { flops: (chunks * n) as u64, bytes: 4 * (chunks * n + 2 * n) as u64 };
    enc.dispatch(
        &BIAS,
        "colsum_finish",
        &p,
        &[Arg::R(part), Arg::W(out)],
        [n.div_ceil(WG as usize) as u32, 1, 1],
        cost,
    );
}
