//! The LoRA products of sibling adapters (layers sharing one input: q/k/v, gate/up) in one
//! dispatch (shaders/lora_siblings.wgsl): the forward's u_j = x A_j^T and the backward's
//! dA_j += s g_j^T x, each with `matmul_dot`'s bits.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(LORA_SIBLINGS, "lora_siblings");

/// At most this many siblings share a dispatch (q, k, v).
pub const MAX: usize = 3;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    r: u32,
    n: u32,
    a_off: [u32; 4],
    scale: f32,
    _pad: [u32; 3],
}

/// The adapters' A matrices (or their gradients) as the kernel reads them: `span`, a view
/// of one parameter arena holding them all, and each one's element offset in it.
#[derive(Clone)]
pub struct Span {
    pub span: Tensor,
    pub offsets: Vec<usize>,
}

fn params(rows: usize, c: usize, r: usize, s: &Span, scale: f32) -> Params {
    let mut a_off = [0u32; 4];
    for (o, &x) in a_off.iter_mut().zip(&s.offsets) {
        *o = x as u32;
    }
    Params { rows: rows as u32, c: c as u32, r: r as u32, n: s.offsets.len() as u32, a_off, scale, _pad: [0; 3] }
}

/// u_j(rows, R) = x(rows, C) . A_j^T for each sibling j (A_j (R, C) in `a`), overwritten.
pub fn forward(enc: &mut Encoder, (rows, c, r): (usize, usize, usize), x: &Tensor, a: &Span, u: &[&Tensor]) {
    let n = a.offsets.len();
    assert!((1..=MAX).contains(&n) && u.len() == n, "lora_siblings: 1 to {MAX} siblings, one u each");
    debug_assert!(x.len >= rows * c && u.iter().all(|t| t.len >= rows * r));
    debug_assert!(a.offsets.iter().all(|&o| o + r * c <= a.span.len));
    let (n64, rows64, c64, r64) = (n as u64, rows as u64, c as u64, r as u64);
    let cost =
        Cost { flops: 2 * n64 * rows64 * r64 * c64, bytes: 4 * n64 * (rows64 * c64 * r64 + r64 * c64 + rows64 * r64) };
    let dummy = enc.gpu().dummy.clone();
    let out = |j: usize| if j < n { u[j] } else { &dummy };
    let args = [Arg::R(x), Arg::R(&a.span), Arg::W(out(0)), Arg::W(out(1)), Arg::W(out(2))];
    let p = params(rows, c, r, a, 1.0);
    enc.dispatch(&LORA_SIBLINGS, "lora_siblings_forward", &p, &args, grid_1d(n * rows * r, WG), cost);
}

/// dA_j(R, C) += s * g_j(rows, R)^T . x(rows, C) for each sibling j (dA_j in `da`).
pub fn backward(enc: &mut Encoder, (rows, c, r): (usize, usize, usize), s: f32, x: &Tensor, g: &[&Tensor], da: &Span) {
    let n = da.offsets.len();
    assert!((1..=MAX).contains(&n) && g.len() == n, "lora_siblings: 1 to {MAX} siblings, one g each");
    debug_assert!(x.len >= rows * c && g.iter().all(|t| t.len >= rows * r));
    debug_assert!(da.offsets.iter().all(|&o| o + r * c <= da.span.len));
    let (n64, rows64, c64, r64) = (n as u64, rows as u64, c as u64, r as u64);
    let cost = Cost {
        flops: 2 * n64 * rows64 * r64 * c64,
        bytes: 4 * n64 * (rows64 * c64 * r64 + 2 * r64 * c64 + rows64 * r64),
    };
    let dummy = enc.gpu().dummy.clone();
    let inp = |j: usize| if j < n { g[j] } else { &dummy };
    let args = [Arg::R(x), Arg::R(inp(0)), Arg::R(inp(1)), Arg::R(inp(2)), Arg::W(&da.span)];
    let p = params(rows, c, r, da, s);
    enc.dispatch(&LORA_SIBLINGS, "lora_siblings_backward", &p, &args, grid_1d(n * r * c, WG), cost);
}
