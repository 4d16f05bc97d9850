//! Inverted dropout with a stateless hash mask (shaders/dropout.wgsl), for LoRA.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(DROPOUT, "dropout");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    seed: u32,
    salt: u32,
    site: u32,
    threshold: u32,
    scale: f32,
    accumulate: u32,
    slot: u32,
}

/// Which mask: the same (seed, salt, site) gives the same mask in forward and backward.
/// The salt the kernel uses is `salt ^ salts[slot]` with `Salts` (training: a per-step
/// value in a small buffer the host writes, so the uniform stays the same every step), or
/// just `salt` without.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mask {
    /// Drop probability in [0, 1).
    pub p: f32,
    pub seed: u32,
    pub salt: u32,
    pub site: u32,
}

impl Mask {
    fn params(&self, n: usize, accumulate: bool, slot: u32) -> Params {
        assert!((0.0..1.0).contains(&self.p), "dropout probability {} not in [0, 1)", self.p);
        Params {
            n: n as u32,
            seed: self.seed,
            salt: self.salt,
            site: self.site,
            threshold: threshold(self.p),
            scale: 1.0 / (1.0 - self.p),
            accumulate: accumulate as u32,
            slot,
        }
    }

    /// The mask on the host (tests): whether element `i` is kept.
    pub fn kept(&self, i: u32) -> bool {
        let h = mix32(mix32(mix32(mix32(self.seed) ^ self.salt) ^ self.site) ^ i);
        h >= threshold(self.p)
    }
}

fn threshold(p: f32) -> u32 {
    ((p as f64) * 4294967296.0).round().min(u32::MAX as f64) as u32
}

/// lowbias32, as in the shader.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846ca68b);
    x ^= x >> 16;
    x
}

/// Per-micro-batch salts on the GPU: u32 (slots), `buf[slot]` XORed into a mask's salt.
#[derive(Clone, Copy)]
pub struct Salts<'a> {
    pub buf: &'a Tensor,
    pub slot: u32,
}

/// The salt buffer and slot to bind: without, the device's `zero` (wgpu zero-initializes
/// buffers, and no kernel writes it), so the salt stays `Mask::salt`.
fn salt_arg<'a>(salts: Option<Salts<'a>>, zero: &'a Tensor) -> (&'a Tensor, u32) {
    match salts {
        Some(s) => {
            debug_assert!((s.slot as usize) < s.buf.len);
            (s.buf, s.slot)
        }
        None => (zero, 0),
    }
}

/// y(n) = keep ? x / (1 - p) : 0.
pub fn forward(enc: &mut Encoder, mask: &Mask, x: &Tensor, y: &Tensor, n: usize) {
    forward_salted(enc, mask, None, x, y, n)
}

/// `forward` with the salt XORed with `salts` (training's per-step salt).
pub fn forward_salted(enc: &mut Encoder, mask: &Mask, salts: Option<Salts>, x: &Tensor, y: &Tensor, n: usize) {
    debug_assert!(x.len >= n && y.len >= n && n <= u32::MAX as usize);
    let zero = enc.gpu().zero.clone();
    let (sb, slot) = salt_arg(salts, &zero);
    let cost = Cost { flops: n as u64, bytes: 8 * n as u64 };
    let p = mask.params(n, false, slot);
    enc.dispatch(&DROPOUT, "dropout_forward", &p, &[Arg::R(x), Arg::W(y), Arg::R(sb)], grid_1d(n, WG), cost);
}

/// dx(n) [+]= keep ? dy / (1 - p) : 0.
pub fn backward(enc: &mut Encoder, mask: &Mask, dy: &Tensor, dx: &Tensor, n: usize, accumulate: bool) {
    backward_salted(enc, mask, None, dy, dx, n, accumulate)
}

/// `backward` with the salt XORed with `salts`, as in `forward_salted`.
pub fn backward_salted(
    enc: &mut Encoder,
    mask: &Mask,
    salts: Option<Salts>,
    dy: &Tensor,
    dx: &Tensor,
    n: usize,
    accumulate: bool,
) {
    debug_assert!(dy.len >= n && dx.len >= n && n <= u32::MAX as usize);
    let zero = enc.gpu().zero.clone();
    let (sb, slot) = salt_arg(salts, &zero);
    let cost = Cost { flops: n as u64, bytes: (8 + 4 * accumulate as u64) * n as u64 };
    let p = mask.params(n, accumulate, slot);
    enc.dispatch(&DROPOUT, "dropout_backward", &p, &[Arg::R(dy), Arg::W(dx), Arg::R(sb)], grid_1d(n, WG), cost);
}
