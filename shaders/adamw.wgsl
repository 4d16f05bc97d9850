// torch.optim.AdamW (single-tensor path, not capturable) after
// torch.nn.utils.clip_grad_norm_, one thread per element:
//   c     = min(1, max_norm / (norm + 1e-6))          only when clipping; g = grad * c
//   param = param * (1 - lr * wd)                      only for decayed tensors
//   m     = lerp(m, g, 1 - beta1)                      torch's two-branch lerp
//   v     = v * beta2 + (1 - beta2) * g * g
//   param = param - step_size * (m / (sqrt(v) / sqrt(bc2) + eps)),  step_size = lr / bc1
// Scalars that torch computes as Python floats (1 - lr*wd, 1 - beta1, step_size, sqrt(bc2))
// arrive precomputed in f64 and rounded once, as torch rounds them to the tensor's dtype.
// Those that change every step (decay_mul, step_size, bc2_sqrt) come from `sched`, a small
// buffer the host writes once per step, so the uniform (and the bind group) stays the same
// from step to step.
// The clip coefficient is computed here because torch computes it in f32 from a tensor.
// If the norm is NaN or Inf nothing is written: the step is skipped, param, m, v keep
// their bits, and the host (which reads the norm) reports it.
// FLOPs ~ 16 per element; bytes 28 per element.

struct Params {
    n: u32,
    flags: u32,         // DECAY | CLIP
    lerp_w: f32,        // 1 - beta1
    beta2: f32,
    one_m_beta2: f32,   // 1 - beta2
    eps: f32,
    max_norm: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>; // (n)
@group(0) @binding(2) var<storage, read> grad: array<f32>;        // (n)
@group(0) @binding(3) var<storage, read_write> m: array<f32>;     // (n) first moment
@group(0) @binding(4) var<storage, read_write> v: array<f32>;     // (n) second moment
@group(0) @binding(5) var<storage, read> stats: array<f32>;       // (4) [0] = global grad norm
// (4) [1 - lr * weight_decay, lr / (1 - beta1^step), sqrt(1 - beta2^step), 0]
@group(0) @binding(6) var<storage, read> sched: array<f32>;

@compute @workgroup_size(WG)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    let norm = stats[0];
    // A bit test: `norm != norm` may be folded away by a compiler that assumes no NaN.
    if ((bitcast<u32>(norm) & 0x7f800000u) == 0x7f800000u) { return; }

    var g = grad[i];
    if ((p.flags & CLIP) != 0u) {
        g = g * min(p.max_norm / (norm + 1e-6), 1.0);
    }
    var w = param[i];
    if ((p.flags & DECAY) != 0u) {
        w = w * sched[0];
    }
    var mi = m[i];
    // torch's lerp: the branch keeps the result exact at weight 0 and 1.
    if (abs(p.lerp_w) < 0.5) {
        mi = mi + p.lerp_w * (g - mi);
    } else {
        mi = g - (g - mi) * (1.0 - p.lerp_w);
    }
    let vi = v[i] * p.beta2 + p.one_m_beta2 * (g * g);
    let denom = sqrt(vi) / sched[2] + p.eps;
    w = w - sched[1] * (mi / denom);
    param[i] = w;
    m[i] = mi;
    v[i] = vi;
}
