// SwiGLU activation of a gated MLP (Llama, Qwen2): out = silu(gate) * up, elementwise.
//   silu(g) = g * sigmoid(g);  silu'(g) = s * (1 + g * (1 - s)),  s = sigmoid(g)
//   dgate = dout * up * silu'(gate),  dup = dout * silu(gate)
// FLOPs ~ 6n forward and ~12n backward (exp counted as one).

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// (sigmoid(v), 1 - sigmoid(v)), each without cancellation (1 - s computed by subtraction
// loses all its digits for large v), and with exp of a non-positive argument only, so no
// intermediate overflows to infinity (which WGSL lets an implementation assume never happens).
fn sigmoid2(v: f32) -> vec2<f32> {
    let e = exp(-abs(v));
    let q = 1.0 / (1.0 + e);
    return select(vec2(e * q, q), vec2(q, e * q), v >= 0.0);
}

@group(0) @binding(1) var<storage, read> gate: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read> up: array<f32>;         // (n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n)

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    let g = gate[i];
    out[i] = g * sigmoid2(g).x * up[i];
}

@group(0) @binding(1) var<storage, read> bgate: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> bup: array<f32>;          // (n)
@group(0) @binding(3) var<storage, read> dout: array<f32>;         // (n)
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>;  // (n)
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;    // (n)

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    let g = bgate[i];
    let s = sigmoid2(g);
    let d = dout[i];
    dgate[i] = d * bup[i] * s.x * (1.0 + g * s.y);
    dup[i] = d * g * s.x;
}
