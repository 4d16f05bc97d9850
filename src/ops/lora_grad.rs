//! A LoRA linear's g = dy B and dB += s dy^T u in one dispatch (shaders/lora_grad.wgsl):
//! the two products of the backward that share dy and need nothing from each other. On
//! CPU adapters these are two `matmul_dot` dispatches otherwise, with the same bits.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Gpu, Tensor, WG};
use crate::ops::matmul::SKINNY;

crate::kernel!(LORA_GRAD, "lora_grad");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    out: u32,
    r: u32,
    _pad: u32,
    scale: f32,
}

/// Whether a rank-`rank` adapter's g and dB go through this kernel on `gpu`: where the
/// kernel table (`ops::matmul::choose`) gives both products `matmul_dot` (CPU adapters,
/// R <= 16), so one dispatch replaces two with the same bits. GPUs keep the two skinny
/// split-K products until a GPU measurement says one thread per output pays there.
pub fn applies(gpu: &Gpu, rank: usize) -> bool {
    gpu.matmul_cpu && rank <= SKINNY
}

/// g(rows, R) = dy(rows, out) . B(out, R) (overwritten), and dB(out, R) += s * dy^T . u
/// with u (rows, R): `matmul_dot`'s bits for each.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    enc: &mut Encoder,
    (rows, out, r): (usize, usize, usize),
    scale: f32,
    dy: &Tensor,
    b: &Tensor,
    u: &Tensor,
    g: &Tensor,
    db: &Tensor,
) {
    debug_assert!(dy.len >= rows * out && b.len >= out * r && u.len >= rows * r);
    debug_assert!(g.len >= rows * r && db.len >= out * r);
    let (rows64, out64, r64) = (rows as u64, out as u64, r as u64);
    let p = Params { rows: rows as u32, out: out as u32, r: r as u32, _pad: 0, scale };
    let cost = Cost {
        flops: 4 * r64 * rows64 * out64,
        bytes: 4 * (2 * r64 * rows64 * out64 + r64 * (rows64 + out64) + 2 * r64 * out64),
    };
    let args = [Arg::R(dy), Arg::R(b), Arg::R(u), Arg::W(g), Arg::W(db)];
    enc.dispatch(&LORA_GRAD, "lora_grad", &p, &args, grid_1d((rows + out) * r, WG), cost);
}
