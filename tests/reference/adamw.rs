//! torch.optim.AdamW after torch.nn.utils.clip_grad_norm_, in f64, from the formulas in
//! PyTorch's documentation and single-tensor implementation.

#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 0 = no clipping
    pub max_grad_norm: f64,
}

/// One step (`step` 1-based) on one tensor. `norm` is the global norm over every tensor
/// the optimizer steps; a non-finite norm leaves everything unchanged.
pub fn adamw_step(
    hp: &Hyper,
    step: u64,
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    norm: f64,
    decay: bool,
) {
    if !norm.is_finite() {
        return;
    }
    let clip = if hp.max_grad_norm > 0.0 { (hp.max_grad_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    let bc1 = 1.0 - hp.beta1.powi(step as i32);
    let bc2 = 1.0 - hp.beta2.powi(step as i32);
    for i in 0..param.len() {
        let g = grad[i] * clip;
        if decay {
            param[i] *= 1.0 - hp.lr * hp.weight_decay;
        }
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
        let m_hat = m[i] / bc1;
        let v_hat = v[i] / bc2;
        param[i] -= hp.lr * m_hat / (v_hat.sqrt() + hp.eps);
    }
}
