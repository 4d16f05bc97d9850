// Soft-capping of the final logits (Gemma 2/3's `final_logit_softcapping`):
//   y = cap * tanh(z / cap),  dz = dy * (1 - tanh(z / cap)^2)
// tanh is computed here, not with the builtin (which some drivers return as NaN for
// large |u|, and whose accuracy near 0 is not specified): with u = z / cap, t = |u|,
//   t >= 0.4: tanh t = (1 - e) / (1 + e), e = exp(-2t) in (0, 0.45]: no cancellation,
//             and 1 - tanh^2 = 4e / (1 + e)^2 straight from e (no 1 - t^2 cancellation
//             where tanh is near 1);
//   t < 0.4:  the Taylor series through u^13 (the next term is below 2e-9 of the value).
// t is clamped to 40, where tanh is 1 in f32 and e = exp(-80) = 1.8e-35 still a normal
// f32 (beyond it, 1 - tanh^2 is reported as 4 exp(-80) = 7e-35 where the truth is smaller).
// FLOPs ~ 12n forward, ~14n backward.

struct Params {
    n: u32,
    cap: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// (tanh u, 1 - tanh(u)^2)
fn tanh_sech2(u: f32) -> vec2<f32> {
    let t = min(abs(u), 40.0);
    if (t < 0.4) {
        let s = u * u;
        // tanh u = u (1 - s/3 + 2s^2/15 - 17s^3/315 + 62s^4/2835 - 1382s^5/155925
        //            + 21844s^6/6081075), Horner from the highest term.
        var q = 21844.0 / 6081075.0;
        q = q * s - 1382.0 / 155925.0;
        q = q * s + 62.0 / 2835.0;
        q = q * s - 17.0 / 315.0;
        q = q * s + 2.0 / 15.0;
        q = q * s - 1.0 / 3.0;
        q = q * s + 1.0;
        let th = u * q;
        return vec2(th, 1.0 - th * th);
    }
    let e = exp(-2.0 * t);
    let r = 1.0 / (1.0 + e);
    let th = (1.0 - e) * r;
    return vec2(select(-th, th, u >= 0.0), 4.0 * e * r * r);
}

@group(0) @binding(1) var<storage, read> z: array<f32>;          // (n) the logits before the cap
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // (n) the capped logits

@compute @workgroup_size(WG)
fn softcap_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    y[i] = p.cap * tanh_sech2(z[i] / p.cap).x;
}

// In place: zg holds z on entry and dz on return (one read-write binding, so the logits'
// buffer needs no twin).
@group(0) @binding(1) var<storage, read_write> zg: array<f32>;   // (n) z -> dz
@group(0) @binding(2) var<storage, read> dy: array<f32>;         // (n) the capped logits' gradient

@compute @workgroup_size(WG)
fn softcap_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    zg[i] = dy[i] * tanh_sech2(zg[i] / p.cap).y;
}
