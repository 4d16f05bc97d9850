// SwiGLU activation of a gated MLP (Llama, Qwen2): out = silu(gate) * up, elementwise.
//   silu(g) = g * sigmoid(g);  silu'(g) = s * (1 + g * (1 - s)),  s = sigmoid(g)
//   dgate = dout * up * silu'(gate),  dup = dout * silu(gate)
// FLOPs ~ 6n forward and ~12n backward (exp counted as one).

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The arithmetic is common.wgsl's `swiglu_out` / `swiglu_grads`, which the matmul epilogue
// shares (a gated MLP's up projection writes act, its down projection's input gradient
// dgate and dup, in their epilogues), so the fused and unfused paths give the same bits.

@group(0) @binding(1) var<storage, read> gate: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read> up: array<f32>;         // (n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n)

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    out[i] = swiglu_out(gate[i], up[i]);
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
    let dg = swiglu_grads(bgate[i], bup[i], dout[i]);
    dgate[i] = dg.x;
    dup[i] = dg.y;
}
