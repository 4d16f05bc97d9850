//! AdamW with global-norm clipping and a non-finite guard (shaders/adamw.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Gpu, Tensor, WG};
use crate::Result;

crate::kernel!(ADAMW, "adamw", DECAY, CLIP);

const DECAY: u32 = 1;
const CLIP: u32 = 2;

/// Hyperparameters, with torch.optim.AdamW's meaning. `max_grad_norm` is
/// clip_grad_norm_'s max_norm; 0 turns clipping off.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
}

/// What changes from one optimizer step to the next (the bias corrections, and the
/// learning rate under a schedule), in a small storage buffer written once per step: a
/// uniform with new contents would be a new uniform buffer and a new bind group for every
/// tensor every step, where these stay the same for the whole run.
pub struct Schedule {
    /// f32 (4): [1 - lr * wd, lr / (1 - beta1^step), sqrt(1 - beta2^step), 0].
    pub buf: Tensor,
}

impl Schedule {
    pub fn new(gpu: &Gpu) -> Result<Schedule> {
        Ok(Schedule { buf: gpu.zeros("adamw_schedule", 4)? })
    }

    /// Set the scalars of step `step` (1-based, as torch's state["step"] after its
    /// increment). Written with `write_buffer`, so every dispatch of the next submit sees
    /// them: write, encode the step's updates, submit, before writing the next step's.
    pub fn write(&self, gpu: &Gpu, hp: &AdamW, step: u64) {
        assert!(step >= 1, "AdamW steps count from 1");
        gpu.write_f32(&self.buf, &scalars(hp, step));
    }
}

/// [decay_mul, step_size, bc2_sqrt, 0] of `step`. As torch does with Python floats: in
/// f64, rounded to f32 once when they meet a tensor.
fn scalars(hp: &AdamW, step: u64) -> [f32; 4] {
    let (lr, b1, b2, wd) = (hp.lr as f64, hp.beta1 as f64, hp.beta2 as f64, hp.weight_decay as f64);
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    [(1.0 - lr * wd) as f32, (lr / bc1) as f32, bc2.sqrt() as f32, 0.0]
}

/// The parameters that stay fixed for a run (the uniform); the per-step ones are in
/// `Schedule`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    flags: u32,
    lerp_w: f32,
    beta2: f32,
    one_m_beta2: f32,
    eps: f32,
    max_norm: f32,
    _pad: u32,
}

/// One AdamW step (its scalars in `sched`, written for this step) of `n` elements: param,
/// m, v (n) updated in place from grad (n), clipped by the global norm in stats[0] (from
/// grad_norm, same pass). If that norm is NaN or Inf, nothing
/// changes. `decay`: whether this tensor takes weight decay (biases and norms usually not).
pub fn step(
    enc: &mut Encoder,
    hp: &AdamW,
    sched: &Schedule,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    stats: &Tensor,
    n: usize,
    decay: bool,
) {
    debug_assert!(param.len >= n && grad.len >= n && m.len >= n && v.len >= n && stats.len >= 1);
    if n == 0 {
        return;
    }
    let b2 = hp.beta2 as f64;
    let decay = decay && hp.weight_decay != 0.0;
    let p = Params {
        n: n as u32,
        flags: if decay { DECAY } else { 0 } | if hp.max_grad_norm > 0.0 { CLIP } else { 0 },
        lerp_w: (1.0 - hp.beta1 as f64) as f32,
        beta2: hp.beta2,
        one_m_beta2: (1.0 - b2) as f32,
        eps: hp.eps,
        max_norm: hp.max_grad_norm,
        _pad: 0,
    };
    let cost = Cost { flops: 16 * n as u64, bytes: 28 * n as u64 + 20 };
    enc.dispatch(
        &ADAMW,
        "adamw_step",
        &p,
        &[Arg::W(param), Arg::R(grad), Arg::W(m), Arg::W(v), Arg::R(stats), Arg::R(&sched.buf)],
        grid_1d(n, WG),
        cost,
    );
}
