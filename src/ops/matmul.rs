//! Matrix multiply (shaders/matmul.wgsl) and the Linear / Conv1D layers built on it.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, ACCUMULATE, WG};

crate::kernel!(MATMUL, "matmul", HAS_BIAS, HAS_RESID, TM, TN, TK);

const HAS_BIAS: u32 = 2;
const HAS_RESID: u32 = 4;
/// The output tile (TM rows by TN columns) of one workgroup of the product entry points,
/// and the depth TK of each step through the shared dimension.
const TM: u32 = 64;
const TN: u32 = 64;
const TK: u32 = 16;
// The tiled kernels' thread layout (16 x 16 threads, 4 x 4 outputs each, a tile loaded as
// 4 x 256 elements) is written for this shape.
const _: () = assert!(TM == 64 && TN == 64 && TK == 16);
/// At most this many rows go through `matmul_rows` (one thread per output) instead of the
/// TM x TN tiles.
pub const SMALL_M: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    /// Scale of the product: C = alpha * op(A) op(B) [+ ...]. 1.0 is exact (x * 1 == x).
    alpha: f32,
    _pad: [u32; 3],
}

/// How an operand is stored: as the matrix itself (row-major) or as its transpose.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    N,
    T,
}

/// Which matmul entry point: workgroup-memory tiles, or register blocks straight from
/// global memory (see shaders/matmul.wgsl for when each wins).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    Tiled,
    Reg,
}

/// C(M,N) = op(A)(M,K) . op(B)(K,N) [+ bias(N)] [+ resid(M,N)], added into C when
/// `accumulate`. op(A) = A stored (M,K) for `Op::N`, or stored (K,M) for `Op::T`.
/// Uses the variant the adapter prefers.
pub fn matmul(
    enc: &mut Encoder,
    mnk: (usize, usize, usize),
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    bias: Option<&Tensor>,
    resid: Option<&Tensor>,
    c: &Tensor,
    accumulate: bool,
) {
    matmul_scaled(enc, mnk, 1.0, a, a_op, b, b_op, bias, resid, c, accumulate)
}

/// C(M,N) = alpha * op(A) . op(B) [+ bias] [+ resid] [+ C]: `matmul` with the product
/// scaled (LoRA's s * u B^T and its gradients), in the same dispatch.
pub fn matmul_scaled(
    enc: &mut Encoder,
    mnk: (usize, usize, usize),
    alpha: f32,
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    bias: Option<&Tensor>,
    resid: Option<&Tensor>,
    c: &Tensor,
    accumulate: bool,
) {
    let v = if enc.gpu().matmul_reg { Variant::Reg } else { Variant::Tiled };
    matmul_variant(enc, v, mnk, alpha, a, a_op, b, b_op, bias, resid, c, accumulate)
}

/// `matmul_scaled` with an explicit kernel variant.
pub fn matmul_variant(
    enc: &mut Encoder,
    variant: Variant,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    bias: Option<&Tensor>,
    resid: Option<&Tensor>,
    c: &Tensor,
    accumulate: bool,
) {
    debug_assert!(a.len >= m * k && b.len >= k * n && c.len >= m * n);
    let (a_rs, a_cs) = match a_op {
        Op::N => (k, 1),
        Op::T => (1, m),
    };
    let (b_rs, b_cs) = match b_op {
        Op::N => (n, 1),
        Op::T => (1, k),
    };
    let flags = if accumulate { ACCUMULATE } else { 0 }
        | if bias.is_some() { HAS_BIAS } else { 0 }
        | if resid.is_some() { HAS_RESID } else { 0 };
    let p = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        flags,
        a_rs: a_rs as u32,
        a_cs: a_cs as u32,
        b_rs: b_rs as u32,
        b_cs: b_cs as u32,
        alpha,
        _pad: [0; 3],
    };
    let dummy = &enc.gpu().dummy.clone();
    let (m64, n64, k64) = (m as u64, n as u64, k as u64);
    let out_bytes = m64 * n64 * (1 + accumulate as u64);
    let (entry, grid, bytes) = if m <= SMALL_M {
        ("matmul_rows", grid_1d(m * n, WG), 4 * (m64 * k64 + k64 * n64 + out_bytes))
    } else {
        let tiles = [n.div_ceil(TN as usize) as u32, m.div_ceil(TM as usize) as u32, 1];
        let entry = match variant {
            Variant::Tiled => "matmul_forward",
            Variant::Reg => "matmul_forward_reg",
        };
        (entry, tiles, 4 * (m64 * k64 * n64.div_ceil(TN as u64) + k64 * n64 * m64.div_ceil(TM as u64) + out_bytes))
    };
    let cost = Cost { flops: 2 * m64 * n64 * k64, bytes };
    enc.dispatch(
        &MATMUL,
        entry,
        &p,
        &[Arg::R(a), Arg::R(b), Arg::R(bias.unwrap_or(dummy)), Arg::R(resid.unwrap_or(dummy)), Arg::W(c)],
        grid,
        cost,
    );
}

/// How a weight matrix is stored: Hugging Face `nn.Linear` keeps (out, in); GPT-2's
/// `Conv1D` keeps (in, out).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WeightLayout {
    OutIn,
    InOut,
}

/// A linear layer's shape: `rows` inputs of `fan_in` features to `fan_out` features.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub rows: usize,
    pub fan_in: usize,
    pub fan_out: usize,
    pub layout: WeightLayout,
}

impl Linear {
    /// y(rows, out) = x(rows, in) . W [+ b] [+ resid]; added into y when `accumulate`.
    pub fn forward(
        &self,
        enc: &mut Encoder,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        resid: Option<&Tensor>,
        y: &Tensor,
        accumulate: bool,
    ) {
        let w_op = match self.layout {
            WeightLayout::OutIn => Op::T,
            WeightLayout::InOut => Op::N,
        };
        matmul(enc, (self.rows, self.fan_out, self.fan_in), x, Op::N, w, w_op, b, resid, y, accumulate);
    }

    /// dx(rows, in) [+]= dy . W^T. `accumulate` adds into dx (a residual branch's gradient).
    pub fn backward_input(&self, enc: &mut Encoder, dy: &Tensor, w: &Tensor, dx: &Tensor, accumulate: bool) {
        let w_op = match self.layout {
            WeightLayout::OutIn => Op::N,
            WeightLayout::InOut => Op::T,
        };
        matmul(enc, (self.rows, self.fan_in, self.fan_out), dy, Op::N, w, w_op, None, None, dx, accumulate);
    }

    /// dW += the weight gradient in the weight's own layout (always accumulated, so
    /// micro-batches add up), and db += column sums of dy.
    pub fn backward_weight(&self, enc: &mut Encoder, dy: &Tensor, x: &Tensor, dw: &Tensor, db: Option<&Tensor>) {
        match self.layout {
            // dW(out, in) += dy^T(out, rows) . x(rows, in)
            WeightLayout::OutIn => {
                matmul(enc, (self.fan_out, self.fan_in, self.rows), dy, Op::T, x, Op::N, None, None, dw, true)
            }
            // dW(in, out) += x^T(in, rows) . dy(rows, out)
            WeightLayout::InOut => {
                matmul(enc, (self.fan_in, self.fan_out, self.rows), x, Op::T, dy, Op::N, None, None, dw, true)
            }
        }
        if let Some(db) = db {
            crate::ops::bias::backward(enc, self.rows, self.fan_out, dy, db, None, true);
        }
    }
}
