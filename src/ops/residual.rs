//! Residual connections (shaders/residual.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(RESIDUAL, "residual");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
}

/// out(n) = a(n) + b(n).
pub fn forward(enc: &mut Encoder, a: &Tensor, b: &Tensor, out: &Tensor, n: usize) {
    debug_assert!(a.len >= n && b.len >= n && out.len >= n && n <= u32::MAX as usize);
    let n64 = n as u64;
    let cost = Cost { flops: n64, bytes: 12 * n64 };
    let args = [Arg::R(a), Arg::R(b), Arg::W(out)];
    enc.dispatch(&RESIDUAL, "residual_forward", &Params { n: n as u32 }, &args, grid_1d(n, WG), cost);
}

/// da(n) += dout(n): both branches of a residual get the output's gradient; `da` already
/// holds the other branch's share.
pub fn backward(enc: &mut Encoder, dout: &Tensor, da: &Tensor, n: usize) {
    debug_assert!(dout.len >= n && da.len >= n && n <= u32::MAX as usize);
    let n64 = n as u64;
    let cost = Cost { flops: n64, bytes: 12 * n64 };
    enc.dispatch(
        &RESIDUAL,
        "residual_backward",
        &Params { n: n as u32 },
        &[Arg::R(dout), Arg::W(da)],
        grid_1d(n, WG),
        cost,
    );
}
