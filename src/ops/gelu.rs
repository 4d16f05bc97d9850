//! GELU, GPT-2's tanh approximation (shaders/gelu.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(GELU, "gelu");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
}

/// out(n) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn forward(enc: &mut Encoder, x: &Tensor, out: &Tensor, n: usize) {
    debug_assert!(x.len >= n && out.len >= n && n <= u32::MAX as usize);
    let n64 = n as u64;
    let cost = Cost { flops: 10 * n64, bytes: 8 * n64 };
    enc.dispatch(&GELU, "gelu_forward", &Params { n: n as u32 }, &[Arg::R(x), Arg::W(out)], grid_1d(n, WG), cost);
}

/// dx(n) = dout * gelu'(x); overwritten.
pub fn backward(enc: &mut Encoder, x: &Tensor, dout: &Tensor, dx: &Tensor, n: usize) {
    debug_assert!(x.len >= n && dout.len >= n && dx.len >= n && n <= u32::MAX as usize);
    let n64 = n as u64;
    let cost = Cost { flops: 16 * n64, bytes: 12 * n64 };
    let args = [Arg::R(x), Arg::R(dout), Arg::W(dx)];
    enc.dispatch(&GELU, "gelu_backward", &Params { n: n as u32 }, &args, grid_1d(n, WG), cost);
}

/// GeGLU (Gemma's gated MLP): out(n) = gelu(gate(n)) * up(n), the same tanh GELU.
pub fn geglu_forward(enc: &mut Encoder, gate: &Tensor, up: &Tensor, out: &Tensor, n: usize) {
    debug_assert!(gate.len >= n && up.len >= n && out.len >= n && n <= u32::MAX as usize);
    let n64 = n as u64;
    let cost = Cost { flops: 11 * n64, bytes: 12 * n64 };
    let args = [Arg::R(gate), Arg::R(up), Arg::W(out)];
    enc.dispatch(&GELU, "geglu_forward", &Params { n: n as u32 }, &args, grid_1d(n, WG), cost);
}

/// dgate(n) = dout * up * gelu'(gate), dup(n) = dout * gelu(gate); both overwritten.
#[allow(clippy::too_many_arguments)]
pub fn geglu_backward(
    enc: &mut Encoder,
    gate: &Tensor,
    up: &Tensor,
    dout: &Tensor,
    dgate: &Tensor,
    dup: &Tensor,
    n: usize,
) {
    debug_assert!(gate.len >= n && up.len >= n && dout.len >= n && dgate.len >= n && dup.len >= n);
    let n64 = n as u64;
    let cost = Cost { flops: 19 * n64, bytes: 20 * n64 };
    let args = [Arg::R(gate), Arg::R(up), Arg::R(dout), Arg::W(dgate), Arg::W(dup)];
    enc.dispatch(&GELU, "geglu_backward", &Params { n: n as u32 }, &args, grid_1d(n, WG), cost);
}
