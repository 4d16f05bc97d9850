//! Row gather and its scatter-back (shaders/gather.wgsl): only the N rows that carry loss
//! go through the LM head.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};
use crate::ops::fill::fill;

crate::kernel!(GATHER, "gather");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    c: u32,
}

/// out(N, C) = x(R, C)[rows(N)]. `rows` (u32) must be < R.
pub fn forward(enc: &mut Encoder, x: &Tensor, rows: &Tensor, out: &Tensor, n: usize, c: usize) {
    debug_assert!(rows.len >= n && out.len >= n * c);
    let p = Params { n: n as u32, c: c as u32 };
    let cost = Cost { flops: 0, bytes: 4 * (2 * n * c + n) as u64 };
    if n * c > 0 {
        enc.dispatch(&GATHER, "gather_forward", &p, &[Arg::R(x), Arg::R(rows), Arg::W(out)], grid_1d(n * c, WG), cost);
    }
}

/// dx(R, C) = 0 except dx[rows[i]] = dout(N, C)[i]. Every element of dx is written (clear,
/// then scatter, in the same pass), so dx needs no clearing beforehand. `rows` must be
/// distinct (they are positions in the batch), which keeps the scatter race-free.
pub fn backward(enc: &mut Encoder, dout: &Tensor, rows: &Tensor, dx: &Tensor, n: usize, r: usize, c: usize) {
    debug_assert!(dout.len >= n * c && rows.len >= n && dx.len >= r * c && n <= r);
    fill(enc, dx, 0.0, r * c);
    scatter(enc, dout, rows, dx, n, c);
}

/// dx[rows[i]] = dout(N, C)[i], every other row of dx left as it is: `backward` without
/// the clearing, so the rows of a gather can be scattered back in chunks (a chunk's
/// `rows` and `dout` are views at the chunk's start). `rows` must be distinct.
pub fn scatter(enc: &mut Encoder, dout: &Tensor, rows: &Tensor, dx: &Tensor, n: usize, c: usize) {
    debug_assert!(dout.len >= n * c && rows.len >= n);
    let p = Params { n: n as u32, c: c as u32 };
    let cost = Cost { flops: 0, bytes: 4 * (2 * n * c + n) as u64 };
    if n * c > 0 {
        enc.dispatch(
            &GATHER,
            "gather_backward",
            &p,
            &[Arg::R(dout), Arg::R(rows), Arg::W(dx)],
            grid_1d(n * c, WG),
            cost,
        );
    }
}
