// Column sums over rows, in two stages (the bias gradient, and the second stage of every
// row reduction: RMSNorm's weight gradient too).
//   bias_partials:  part(chunks, N) = sums of dy(M, N) over chunks of ROW_CHUNK rows, or,
//                   with one chunk (no scratch), db(N) [+]= the column sums directly.
//   colsum_finish:  out(N) [+]= sum over chunks of part(chunks, N), chunks in order.
// The chunks are fixed by the row count alone (not by the device), and each sum runs in a
// fixed order, so the result is deterministic; rows/ROW_CHUNK x N/WG workgroups share the
// work, where one thread per column looping over every row left most of a GPU idle.
// One thread per column in both stages, so the loads of a row coalesce across the workgroup.

struct Params {
    m: u32,      // rows (bias_partials) or chunks (colsum_finish)
    n: u32,      // columns
    flags: u32,  // ACCUMULATE
    chunk: u32,  // rows per chunk (bias_partials)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;          // (M, N)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;   // (chunks, N) or (N)

@compute @workgroup_size(WG)
fn bias_partials(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    if (n >= p.n) { return; }
    let m0 = gid.y * p.chunk;
    let m1 = min(m0 + p.chunk, p.m);
    var s = 0.0;
    for (var m = m0; m < m1; m++) {
        s += dy[m * p.n + n];
    }
    let o = gid.y * p.n + n;
    if ((p.flags & ACCUMULATE) != 0u) { s += dst[o]; }
    dst[o] = s;
}

@group(0) @binding(1) var<storage, read> part: array<f32>;        // (chunks, N)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;   // (N)

@compute @workgroup_size(WG)
fn colsum_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    if (n >= p.n) { return; }
    var s = 0.0;
    for (var j = 0u; j < p.m; j++) {
        s += part[j * p.n + n];
    }
    if ((p.flags & ACCUMULATE) != 0u) { s += out[n]; }
    out[n] = s;
}
