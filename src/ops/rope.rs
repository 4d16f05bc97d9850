//! Rotary position embedding (shaders/rope.wgsl), exactly as Hugging Face Llama applies it:
//! rotate-half layout, angle = pos * inv_freq[i] as an f32 product.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Arg, Cost, Encoder, Gpu, Tensor, WG};

crate::kernel!(ROPE, "rope");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    d: u32,
    half: u32,
    max_pos: u32,
    /// Heads of the second tensor rotated in the same dispatch (0: none).
    heads2: u32,
}

/// (Defined with the model configuration, which the host-side loaders build without a GPU.)
pub use crate::model::config::default_inv_freq;

/// cos and sin of every (position, frequency) angle, built on the host: the angle is the
/// f32 product HF's matmul gives, its cos/sin taken in f64 and rounded once to f32.
pub struct RopeTable {
    pub cos: Tensor, // (P, D/2)
    pub sin: Tensor, // (P, D/2)
    pub max_pos: usize,
    pub half: usize,
}

impl RopeTable {
    pub fn new(gpu: &Gpu, inv_freq: &[f32], max_pos: usize) -> Result<RopeTable> {
        if inv_freq.is_empty() || max_pos == 0 {
            return Err(Error::Config(format!(
                "RoPE table needs at least one frequency and one position (got {} frequencies, max_pos {max_pos})",
                inv_freq.len()
            )));
        }
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for pos in 0..max_pos {
            for &f in inv_freq {
                let angle = (pos as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(RopeTable { cos: gpu.upload_f32("rope_cos", &cos)?, sin: gpu.upload_f32("rope_sin", &sin)?, max_pos, half })
    }
}

/// Rotate x (rows, heads*D) and, when given, x2 (rows, heads2*D) in place, in one dispatch.
#[allow(clippy::too_many_arguments)]
fn launch(
    enc: &mut Encoder,
    entry: &str,
    x: &Tensor,
    second: Option<(&Tensor, usize)>,
    pos: &Tensor,
    table: &RopeTable,
    rows: usize,
    heads: usize,
    d: usize,
) {
    assert!(d == 2 * table.half, "RoPE: head size {d} but the table was built for {}", 2 * table.half);
    let heads2 = second.map_or(0, |(_, h)| h);
    debug_assert!(x.len >= rows * heads * d && pos.len >= rows);
    debug_assert!(second.is_none_or(|(x2, h)| x2.len >= rows * h * d));
    let p = Params {
        rows: rows as u32,
        heads: heads as u32,
        d: d as u32,
        half: table.half as u32,
        max_pos: table.max_pos as u32,
        heads2: heads2 as u32,
    };
    let pairs = (rows * (heads + heads2) * table.half) as u64;
    let cost = Cost { flops: 6 * pairs, bytes: 4 * 6 * pairs };
    let dummy = enc.gpu().dummy.clone();
    let x2 = second.map_or(&dummy, |(x2, _)| x2);
    enc.dispatch(
        &ROPE,
        entry,
        &p,
        &[Arg::W(x), Arg::R(pos), Arg::R(&table.cos), Arg::R(&table.sin), Arg::W(x2)],
        grid_1d(pairs as usize, WG),
        cost,
    );
}

/// Rotate x(rows, heads*D) in place by the positions pos(rows) (u32, each < max_pos;
/// packed sequences restart their positions).
pub fn forward(enc: &mut Encoder, x: &Tensor, pos: &Tensor, table: &RopeTable, rows: usize, heads: usize, d: usize) {
    launch(enc, "rope_forward", x, None, pos, table, rows, heads, d);
}

/// dx(rows, heads*D) in place: the transpose rotation of the gradient.
pub fn backward(enc: &mut Encoder, dx: &Tensor, pos: &Tensor, table: &RopeTable, rows: usize, heads: usize, d: usize) {
    launch(enc, "rope_backward", dx, None, pos, table, rows, heads, d);
}

/// A block's q (rows, H*D) and k (rows, Hk*D) rotated in place in one dispatch: the same
/// bits as `forward` on each.
#[allow(clippy::too_many_arguments)]
pub fn forward_qk(
    enc: &mut Encoder,
    (q, h): (&Tensor, usize),
    (k, hk): (&Tensor, usize),
    pos: &Tensor,
    table: &RopeTable,
    rows: usize,
    d: usize,
) {
    launch(enc, "rope_forward", q, Some((k, hk)), pos, table, rows, h, d);
}

/// dq and dk in place in one dispatch: the same bits as `backward` on each.
#[allow(clippy::too_many_arguments)]
pub fn backward_qk(
    enc: &mut Encoder,
    (dq, h): (&Tensor, usize),
    (dk, hk): (&Tensor, usize),
    pos: &Tensor,
    table: &RopeTable,
    rows: usize,
    d: usize,
) {
    launch(enc, "rope_backward", dq, Some((dk, hk)), pos, table, rows, h, d);
}
