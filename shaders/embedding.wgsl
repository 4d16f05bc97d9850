// Token (and position) embedding lookup, and its gradient.
//
// Forward: out(rows, C) = wte[ids] (+ wpe[pos]); one thread per output element, so a row's
// C values are read and written by consecutive threads (coalesced).
// Forward from a compact table (embedding_forward_compact): the same with wte read through
// wq_get (quant.wgsl), one pipeline per format.
// Backward: dw[id] += sum of dout rows with that id. Scattering with atomics would make
// the sum's order (and so its rounding) vary run to run, and WGSL has no float atomics
// anyway; instead the host groups the rows by id and cuts each id's rows into segments of
// at most SEG rows. Stage 1: one workgroup per segment sums its rows in a fixed order
// (into dw directly when the segment is its id's only one); stage 2: each id with
// several segments adds their sums in order. So an id filling every row is summed by
// rows/SEG workgroups, not serially by one.

// `scale` multiplies the token rows (Gemma 3 scales its embeddings by sqrt(C), in the model
// dtype, before anything else) and, in the backward, each dout element before it is summed,
// as autograd's gradient of W[ids] * scale is; 1.0 (every other model) changes no bit.
struct Params {
    rows: u32,
    c: u32,
    flags: u32,  // HAS_POS
    n_uniq: u32, // backward: the finals' capacity (rows: the segments')
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
    // The dequantized value times the scale, as `embedding_forward` does with the f32 row:
    // the same bits as the f32 gather over the host-dequantized table.
    var v = wq_get(ids[r], ch, p.c) * p.scale;
    if ((p.flags & HAS_POS) != 0u) {
        v += wpe[pos[r] * p.c + ch];
    }
    out[i] = v;
}

@group(0) @binding(1) var<storage, read> counts: array<u32>;     // (4) [segments, finals]
@group(0) @binding(2) var<storage, read> segs: array<u32>;       // (4 * S) id, first, end, slot
@group(0) @binding(3) var<storage, read> grp_rows: array<u32>;   // (n) rows grouped by id
@group(0) @binding(4) var<storage, read> dout: array<f32>;       // (rows, C)
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;   // (V, C) or (P, C)
@group(0) @binding(6) var<storage, read_write> part: array<f32>; // (slots, C) partial sums

// Stage 1: one workgroup per segment (at most SEG rows of one id; the grid folded like
// grid_1d with a width of 1, sized for the index's capacity, p.rows segments), threads
// striding over C. Rows within a segment are ascending, so each sum is deterministic. An
// id's only segment adds into dw; one of several writes its slot of `part`.
@compute @workgroup_size(WG)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let u = flat_id(wid, nwg, 1u);
    if (u >= counts[0]) { return; }
    let base = segs[4u * u] * p.c;
    let k0 = segs[4u * u + 1u];
    let k1 = segs[4u * u + 2u];
    let slot = segs[4u * u + 3u];
    for (var ch = lid.x; ch < p.c; ch += WG) {
        var s = 0.0;
        for (var k = k0; k < k1; k++) {
            s += dout[grp_rows[k] * p.c + ch] * p.scale;
        }
        if (slot == 0xffffffffu) {
            dw[base + ch] += s;
        } else {
            part[slot * p.c + ch] = s;
        }
    }
}

@group(0) @binding(1) var<storage, read> fmeta: array<u32>;      // (4) [segments, finals]
@group(0) @binding(2) var<storage, read> finals: array<u32>;     // (3 * F) id, first, end slot
@group(0) @binding(3) var<storage, read> fpart: array<f32>;      // (slots, C)
@group(0) @binding(4) var<storage, read_write> fdw: array<f32>;  // (V, C) or (P, C)

// Stage 2: one workgroup per id with several segments (p.n_uniq of them at most), adding
// its segments' sums in slot (= row) order.
@compute @workgroup_size(WG)
fn embedding_backward_finish(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let f = flat_id(wid, nwg, 1u);
    if (f >= fmeta[1]) { return; }
    let base = finals[3u * f] * p.c;
    let s0 = finals[3u * f + 1u];
    let s1 = finals[3u * f + 2u];
    for (var ch = lid.x; ch < p.c; ch += WG) {
        var s = 0.0;
        for (var k = s0; k < s1; k++) {
            s += fpart[k * p.c + ch];
        }
        fdw[base + ch] += s;
    }
}
