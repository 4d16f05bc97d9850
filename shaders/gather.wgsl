// Select the rows that carry loss, so the LM head (the largest matmul of a step) runs on
// N rows instead of R = B*T: out(N, C) = x[rows](C), and the backward scatters the
// gradient back into a zeroed dx(R, C).
// One thread per element of the N x C side; consecutive threads walk a row, so loads and
// stores coalesce. FLOPs 0; bytes 4*(2*N*C + N) each way.

struct Params {
    n: u32,
    c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // (R, C)
@group(0) @binding(2) var<storage, read> rows: array<u32>;        // (N) distinct, < R
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // (N, C)

@compute @workgroup_size(WG)
fn gather_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_id(gid, nwg, WG);
    if (e >= p.n * p.c) { return; }
    let i = e / p.c;
    out[e] = x[rows[i] * p.c + e % p.c];
}

// dx must already be zero where no row lands (gather::backward clears it in the same pass;
// gather::scatter writes chunks of rows into a dx cleared once): rows are distinct,
// so every element is written by at most one thread and the result is deterministic.
@group(0) @binding(1) var<storage, read> dout: array<f32>;        // (N, C)
@group(0) @binding(2) var<storage, read> rows_b: array<u32>;      // (N)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;    // (R, C)

@compute @workgroup_size(WG)
fn gather_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_id(gid, nwg, WG);
    if (e >= p.n * p.c) { return; }
    let i = e / p.c;
    dx[rows_b[i] * p.c + e % p.c] = dout[e];
}
