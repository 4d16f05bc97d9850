//! SwiGLU activation of the gated MLP (shaders/swiglu.wgsl): out = silu(gate) * up.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(SWIGLU, "swiglu");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
}

/// out(n) = silu(gate(n)) * up(n).
pub fn forward(enc: &mut Encoder, gate: &Tensor, up: &Tensor, out: &Tensor, n: usize) {
    debug_assert!(gate.len >= n && up.len >= n && out.len >= n && n <= u32::MAX as usize);
    let n64 = n as u64;
    let cost = Cost { flops: 6 * n64, bytes: 12 * n64 };
    let args = [Arg::R(gate), Arg::R(up), Arg::W(out)];
    enc.dispatch(&SWIGLU, "swiglu_forward", &Params { n: n as u32 }, &args, grid_1d(n, WG), cost);
}

/// dgate(n) = dout * up * silu'(gate), dup(n) = dout * silu(gate); both overwritten.
pub fn backward(enc: &mut Encoder, gate: &Tensor, up: &Tensor, dout: &Tensor, dgate: &Tensor, dup: &Tensor, n: usize) {
    debug_assert!(gate.len >= n && up.len >= n && dout.len >= n && dgate.len >= n && dup.len >= n);
    let n64 = n as u64;
    let cost = Cost { flops: 12 * n64, bytes: 20 * n64 };
    let args = [Arg::R(gate), Arg::R(up), Arg::R(dout), Arg::W(dgate), Arg::W(dup)];
    enc.dispatch(&SWIGLU, "swiglu_backward", &Params { n: n as u32 }, &args, grid_1d(n, WG), cost);
}
