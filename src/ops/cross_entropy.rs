//! Fused softmax + cross-entropy forward and backward (shaders/cross_entropy.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Arg, Cost, Encoder, Tensor};

crate::kernel!(CROSS_ENTROPY, "cross_entropy");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    v: u32,
}

/// Rows per grid dimension: WebGPU's limit on workgroups along one axis.
const MAX_GROUPS: usize = 65535;

/// Loss and logit gradient of N rows in one pass over the logits.
///
/// `logits` (N, V) is overwritten IN PLACE by dlogits = weights[i] * (softmax - onehot);
/// `targets` (N, u32) must be < V; `weights` (N) scale each row's gradient (0 for a row that
/// carries no loss, 1/count for a mean); `nll` (N) receives -log softmax(logits)[target],
/// unweighted, so the host can report the loss however it averages.
pub fn forward_backward(
    enc: &mut Encoder,
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    nll: &Tensor,
    n: usize,
    v: usize,
) {
    debug_assert!(logits.len >= n * v && targets.len >= n && weights.len >= n && nll.len >= n);
    if n == 0 || v == 0 {
        return;
    }
    let p = Params { n: n as u32, v: v as u32 };
    let y = n.div_ceil(MAX_GROUPS);
    let grid = [n.div_ceil(y) as u32, y as u32, 1];
    let (n64, v64) = (n as u64, v as u64);
    let cost = Cost { flops: 8 * n64 * v64, bytes: 4 * (3 * n64 * v64 + 3 * n64) };
    enc.dispatch(
        &CROSS_ENTROPY,
        "cross_entropy_forward_backward",
        &p,
        &[Arg::W(logits), Arg::R(targets), Arg::R(weights), Arg::W(nll)],
        grid,
        cost,
    );
}
