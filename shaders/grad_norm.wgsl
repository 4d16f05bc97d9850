// The global L2 norm of every gradient, for clipping and for skipping a step whose
// gradients overflowed. Two stages with a fixed summation order, so the same gradients
// always give the same bits:
//   grad_norm_partials: per tensor, each workgroup sums the squares of CHUNK consecutive
//                       elements into partials[offset + workgroup];
//   grad_norm_final:    one workgroup sums all partials; stats[0] = sqrt(sum).
// Non-finite values are found by testing bits (a compiler may assume NaN never occurs and
// fold `x != x`, and max() may drop a NaN), and carried as a NaN or Inf partial, so a
// single bad element cannot be lost. A sum of finite squares that overflows is Inf too.
// FLOPs 2 per element; bytes 4 per element plus 8 per partial.

struct Params {
    len: u32,     // elements of this tensor (partials) or number of partials (final)
    offset: u32,  // first partial this tensor writes
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;                // (len)
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;   // (partials_len)

// ITEMS elements per thread, CHUNK = WG * ITEMS per workgroup: from src/ops/grad_norm.rs.
const EXP_MASK: u32 = 0x7f800000u;
const MANT_MASK: u32 = 0x007fffffu;
const INF_BIT: u32 = 1u;
const NAN_BIT: u32 = 2u;

fn classify(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & EXP_MASK) != EXP_MASK) { return 0u; }
    if ((b & MANT_MASK) != 0u) { return NAN_BIT; }
    return INF_BIT;
}

fn encode(s: f32, bad: u32) -> f32 {
    // NaN (0x7fc00000) or Inf (0x7f800000) built from the runtime `bad`: a constant NaN or
    // Inf is a WGSL shader-creation error (Tint rejects it; naga lets it through).
    if (bad != 0u) { return bitcast<f32>(EXP_MASK | ((bad & NAN_BIT) << 21u)); }
    return s;
}

// The workgroup's sum and non-finite flags (deterministic trees, common.wgsl), encoded.
fn reduce(t: u32, s0: f32, bad0: u32) -> f32 {
    let s = wg_sum(s0, t);
    let bad = wg_or(bad0, t);
    // A finite sum that overflowed shows up here.
    return encode(s, bad | classify(s));
}

@compute @workgroup_size(WG)
fn grad_norm_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let w = wid.y * nwg.x + wid.x;
    let start = w * CHUNK;
    if (start >= p.len) { return; } // uniform across the workgroup
    var s = 0.0;
    var bad = 0u;
    for (var i = 0u; i < ITEMS; i++) {
        let e = start + i * WG + t;
        if (e < p.len) {
            let x = g[e];
            bad |= classify(x);
            s = fma(x, x, s);
        }
    }
    let r = reduce(t, s, bad);
    if (t == 0u) {
        partials[p.offset + w] = r;
    }
}

@group(0) @binding(1) var<storage, read> parts: array<f32>;            // (len)
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;      // (4)

@compute @workgroup_size(WG)
fn grad_norm_final(@builtin(local_invocation_index) t: u32) {
    var s = 0.0;
    var bad = 0u;
    for (var i = t; i < p.len; i += WG) {
        let x = parts[i];
        bad |= classify(x);
        s += x;
    }
    let r = reduce(t, s, bad);
    if (t == 0u) {
        // sqrt of NaN / Inf is NaN / Inf on every backend we know, but do not rely on it.
        stats[0] = encode(sqrt(r), classify(r));
        stats[1] = r;
    }
}
