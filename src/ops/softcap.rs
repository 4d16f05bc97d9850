//! Logit soft-capping (shaders/softcap.wgsl): Gemma 3's `final_logit_softcapping`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(SOFTCAP, "softcap");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cap: f32,
    _pad: [u32; 2],
}

/// y(n) = cap * tanh(z(n) / cap); `cap` positive and finite (the config's check).
pub fn forward(enc: &mut Encoder, z: &Tensor, y: &Tensor, cap: f32, n: usize) {
    debug_assert!(z.len >= n && y.len >= n && n <= u32::MAX as usize && cap > 0.0);
    let n64 = n as u64;
    let cost = Cost { flops: 12 * n64, bytes: 8 * n64 };
    let p = Params { n: n as u32, cap, _pad: [0; 2] };
    enc.dispatch(&SOFTCAP, "softcap_forward", &p, &[Arg::R(z), Arg::W(y)], grid_1d(n, WG), cost);
}

/// In place: `z` (n) holds the uncapped values on entry and their gradient
/// dz = dy * (1 - tanh(z / cap)^2) on return.
pub fn backward(enc: &mut Encoder, z: &Tensor, dy: &Tensor, cap: f32, n: usize) {
    debug_assert!(z.len >= n && dy.len >= n && n <= u32::MAX as usize && cap > 0.0);
    let n64 = n as u64;
    let cost = Cost { flops: 14 * n64, bytes: 12 * n64 };
    let p = Params { n: n as u32, cap, _pad: [0; 2] };
    enc.dispatch(&SOFTCAP, "softcap_backward", &p, &[Arg::W(z), Arg::R(dy)], grid_1d(n, WG), cost);
}
