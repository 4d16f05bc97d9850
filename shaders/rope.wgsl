// Rotary position embedding, Hugging Face Llama's rotate-half layout, applied in place to
// x(rows, heads*D): for i < D/2 the pair (x[i], x[i + D/2]) turns by pos * inv_freq[i].
//
// The angles' cos/sin come from host-built tables (P, D/2): WGSL's cos/sin are only
// required to be accurate near zero, and positions in the thousands give large angles.
// One thread per pair. FLOPs 6 per pair; bytes 4 * (4 + 2) per pair (x in and out, cos, sin).

struct Params {
    rows: u32,
    heads: u32,
    d: u32,
    half: u32,
    max_pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (rows, heads*D), in place
@group(0) @binding(2) var<storage, read> pos: array<u32>;     // (rows)
@group(0) @binding(3) var<storage, read> cos_t: array<f32>;   // (P, D/2)
@group(0) @binding(4) var<storage, read> sin_t: array<f32>;   // (P, D/2)

// Rotate pair n by `sign` times its angle: +1 the forward rotation, -1 its transpose (the
// backward of an orthogonal map is its transpose).
fn rotate(n: u32, sign: f32) {
    if (n >= p.rows * p.heads * p.half) { return; }
    let i = n % p.half;
    let rh = n / p.half; // row * heads + head
    let row = rh / p.heads;
    // A position past the table would read another buffer's memory on a robust-access-free
    // backend; the batch builder refuses such positions, this only keeps the read in bounds.
    let t = min(pos[row], p.max_pos - 1u) * p.half + i;
    let c = cos_t[t];
    let s = sign * sin_t[t];
    let lo = rh * p.d + i;
    let hi = lo + p.half;
    let a = x[lo];
    let b = x[hi];
    x[lo] = a * c - b * s;
    x[hi] = b * c + a * s;
}

@compute @workgroup_size(WG)
fn rope_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    rotate(flat_id(gid, nwg, WG), 1.0);
}

@compute @workgroup_size(WG)
fn rope_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    rotate(flat_id(gid, nwg, WG), -1.0);
}
