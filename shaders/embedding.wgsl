// Token (and position) embedding lookup, and its gradient.
//
// Forward: out(rows, C) = wte[ids] (+ wpe[pos]); one thread per output element, so a row's
// C values are read and written by consecutive threads (coalesced).
// Forward from a compact table (embedding_forward_compact): the same with wte read through
// wq_get (quant.wgsl), one pipeline per format.
// Backward: dw[id] += sum of dout rows with that id. Scattering with atomics would make
// the sum's order (and so its rounding) vary run to run, and WGSL has no float atomics
// anyway; instead the host groups the rows by id (CSR: uniq, starts, rows) and one
// workgroup owns each unique id, summing its rows in a fixed order.

// `scale` multiplies the token rows (Gemma 3 scales its embeddings by sqrt(C), in the model
// dtype, before anything else) and, in the backward, each dout element before it is summed,
// as autograd's gradient of W[ids] * scale is; 1.0 (every other model) changes no bit.
struct Params {
    rows: u32,
    c: u32,
    flags: u32,  // HAS_POS
    n_uniq: u32,
    scale: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;        // (rows)
@group(0) @binding(2) var<storage, read> wte: array<f32>;        // (V, C)
@group(0) @binding(3) var<storage, read> pos: array<u32>;        // (rows)
@group(0) @binding(4) var<storage, read> wpe: array<f32>;        // (P, C)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (rows, C)

@compute @workgroup_size(WG)
fn embedding_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.rows * p.c) { return; }
    let r = i / p.c;
    let ch = i - r * p.c;
    var v = wte[ids[r] * p.c + ch] * p.scale;
    if ((p.flags & HAS_POS) != 0u) {
        v += wpe[pos[r] * p.c + ch];
    }
    out[i] = v;
}

// The compact token table (V, C), in place of wte (src/load/compact.rs's layout).
@group(0) @binding(2) var<storage, read> wq: array<u32>;

@compute @workgroup_size(WG)
fn embedding_forward_compact(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.rows * p.c) { return; }
    let r = i / p.c;
    let ch = i - r * p.c;
    var v = wq_get(ids[r], ch, p.c);
    if ((p.flags & HAS_POS) != 0u) {
        v += wpe[pos[r] * p.c + ch];
    }
    out[i] = v;
}

@group(0) @binding(1) var<storage, read> uniq: array<u32>;        // (U) the distinct ids
@group(0) @binding(2) var<storage, read> starts: array<u32>;      // (U + 1) into grp_rows
@group(0) @binding(3) var<storage, read> grp_rows: array<u32>;    // (n) rows grouped by id
@group(0) @binding(4) var<storage, read> dout: array<f32>;        // (rows, C)
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;    // (V, C) or (P, C)

// One workgroup per unique id (the grid folded like grid_1d with a width of 1), threads
// striding over C. Rows within a group are in ascending order, so the sum is deterministic.
@compute @workgroup_size(WG)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let u = flat_id(wid, nwg, 1u);
    if (u >= p.n_uniq) { return; }
    let base = uniq[u] * p.c;
    let k0 = starts[u];
    let k1 = starts[u + 1u];
    for (var ch = lid.x; ch < p.c; ch += WG) {
        var s = 0.0;
        for (var k = k0; k < k1; k++) {
            s += dout[grp_rows[k] * p.c + ch] * p.scale;
        }
        dw[base + ch] += s;
    }
}
