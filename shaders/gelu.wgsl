// GELU, GPT-2's tanh approximation (Hugging Face "gelu_new"):
//   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// computed as x * sigmoid(2u), the same function: 0.5 (1 + tanh(u)) = sigmoid(2u). This
// needs no tanh (which some drivers return as NaN for large |u|) and does not cancel in
// the negative tail, where 1 + tanh(u) loses every digit.
//   gelu'(x) = s + x * 2 s (1 - s) * u'(x),  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// FLOPs ~ 10n forward and ~16n backward.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const GELU_C: f32 = 0.044715;

// 2u and sigmoid(2u) pieces for x, with no infinities on the way (WGSL lets an
// implementation assume none occur): x is clamped before cubing (at |x| = 20, |2u| = 600,
// far in saturation) and 2u to [-80, 80], where exp(-80) is still a normal f32 and the
// sigmoid is 1 or below 2e-35. Returns (s, e / (1 + e)^2 = s (1 - s)).
fn gelu_sig(xc: f32) -> vec2<f32> {
    let t = clamp(2.0 * SQRT_2_OVER_PI * (xc + GELU_C * xc * xc * xc), -80.0, 80.0);
    let e = exp(-abs(t));
    let q = 1.0 / (1.0 + e);
    let s = select(e * q, q, t >= 0.0);
    return vec2(s, e * q * q);
}

@group(0) @binding(1) var<storage, read> x: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (n)

@compute @workgroup_size(WG)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    let v = x[i];
    // Below -20 the true value is under 1e-200; the clamped sigmoid (2e-35) times a huge
    // |x| would not be.
    out[i] = select(v * gelu_sig(clamp(v, -20.0, 20.0)).x, 0.0, v < -20.0);
}

@group(0) @binding(1) var<storage, read> bx: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read> dout: array<f32>;        // (n)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;    // (n)

@compute @workgroup_size(WG)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    // Past |x| = 20 the second term is below 1e-30 (s (1 - s) < 2e-35), so using the
    // clamped x there only keeps x^2 finite.
    let xc = clamp(bx[i], -20.0, 20.0);
    let sg = gelu_sig(xc);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * xc * xc);
    dx[i] = dout[i] * (sg.x + xc * 2.0 * sg.y * du);
}

// GeGLU, the gated MLP of Gemma (`gelu_pytorch_tanh`, the same tanh GELU):
//   out = gelu(gate) * up;  dgate = dout * up * gelu'(gate),  dup = dout * gelu(gate).
// FLOPs ~ 11n forward and ~19n backward.

// gelu(v) and gelu'(v) with the tails handled as in gelu_forward / gelu_backward.
fn gelu_and_slope(v: f32) -> vec2<f32> {
    let xc = clamp(v, -20.0, 20.0);
    let sg = gelu_sig(xc);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * xc * xc);
    return vec2(select(v * sg.x, 0.0, v < -20.0), sg.x + xc * 2.0 * sg.y * du);
}

@group(0) @binding(1) var<storage, read> ggate: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> gup: array<f32>;          // (n)
@group(0) @binding(3) var<storage, read_write> gout: array<f32>;   // (n)

@compute @workgroup_size(WG)
fn geglu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    gout[i] = gelu_and_slope(ggate[i]).x * gup[i];
}

@group(0) @binding(1) var<storage, read> bggate: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> bgup: array<f32>;          // (n)
@group(0) @binding(3) var<storage, read> gdout: array<f32>;         // (n)
@group(0) @binding(4) var<storage, read_write> dggate: array<f32>;  // (n)
@group(0) @binding(5) var<storage, read_write> dgup: array<f32>;    // (n)

@compute @workgroup_size(WG)
fn geglu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    let a = gelu_and_slope(bggate[i]);
    let d = gdout[i];
    dggate[i] = d * bgup[i] * a.y;
    dgup[i] = d * a.x;
}
