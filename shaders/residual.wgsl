// Residual connection: out = a + b; its backward adds the output gradient into the
// residual stream's gradient (da += dout), which already holds the other branch's share.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> a: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n)

@compute @workgroup_size(WG)
fn residual_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i];
}

@group(0) @binding(1) var<storage, read> dout: array<f32>;       // (n)
@group(0) @binding(2) var<storage, read_write> da: array<f32>;   // (n), accumulated

@compute @workgroup_size(WG)
fn residual_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.n) { return; }
    da[i] += dout[i];
}
