// Inverted dropout with a stateless mask (LoRA's dropout on the adapter's input):
//   keep(i) = hash(seed, salt, site, i) >= threshold,  threshold = round(p * 2^32)
//   forward:  y(n) = keep ? x * scale : 0,            scale = 1 / (1 - p)
//   backward: dx(n) [+]= keep ? dy * scale : 0
// The mask is a pure function of (seed, salt, site, element), so the backward rebuilds it
// instead of storing it, and it is identical on every backend. The salt changes per
// micro-batch and optimizer step, `site` per adapted layer. The salt is p.salt XOR
// salts[p.slot]: in training the changing part lives in a small buffer the host writes
// each step (a zero dummy otherwise), so the uniform, and with it the bind group, is the
// same every step.
// FLOPs ~ n; bytes 8n (forward), 8n or 12n (backward).

struct Params {
    n: u32,
    seed: u32,
    salt: u32,
    site: u32,
    threshold: u32,
    scale: f32,
    accumulate: u32,
    slot: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;         // (n) x or dy
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;   // (n) y or dx
@group(0) @binding(3) var<storage, read> salts: array<u32>;       // (slots) per micro-batch

// A 32-bit integer hash (lowbias32 by Chris Wellons), chained over the four words.
fn mix32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn kept(i: u32) -> bool {
    let h = mix32(mix32(mix32(mix32(p.seed) ^ (p.salt ^ salts[p.slot])) ^ p.site) ^ i);
    return h >= p.threshold;
}

@compute @workgroup_size(256)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, 256u);
    if (i >= p.n) { return; }
    dst[i] = select(0.0, src[i] * p.scale, kept(i));
}

@compute @workgroup_size(256)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, 256u);
    if (i >= p.n) { return; }
    var v = select(0.0, src[i] * p.scale, kept(i));
    if (p.accumulate != 0u) { v += dst[i]; }
    dst[i] = v;
}
