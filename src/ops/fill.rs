//! Fill a tensor with a constant (shaders/fill.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(FILL, "fill");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    value: f32,
}

/// t[..n] = value, recorded in the current pass (ordered with the dispatches around it).
pub fn fill(enc: &mut Encoder, t: &Tensor, value: f32, n: usize) {
    assert!(n <= t.len, "fill {n} elements of a tensor of {}", t.len);
    let p = Params { n: n as u32, value };
    let cost = Cost { flops: 0, bytes: 4 * n as u64 };
    if n > 0 {
        enc.dispatch(&FILL, "fill", &p, &[Arg::W(t)], grid_1d(n, WG), cost);
    }
}
