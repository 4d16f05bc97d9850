// t(n) = value: clears gradients and scratch inside the step's compute pass, where a
// queue-level clear_buffer would end the pass (and is not ordered with the dispatches).

struct Params {
    n: u32,
    value: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> t: array<f32>; // (n)

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, 256u);
    if (i >= p.n) { return; }
    t[i] = p.value;
}
