// Rotary position embedding, Hugging Face Llama's rotate-half layout, applied in place to
// x(rows, heads*D): for i < D/2 the pair (x[i], x[i + D/2]) turns by pos * inv_freq[i].
//
// The angles' cos/sin come from host-built tables (P, D/2): WGSL's cos/sin are only
// required to be accurate near zero, and positions in the thousands give large angles.
// One thread per pair. FLOPs 6 per pair; bytes 4 * (4 + 2) per pair (x in and out, cos, sin).
//
// One dispatch may rotate two tensors at the same positions (a block's q and k, heads and
// heads2 heads of D): the pairs of x first, then those of x2, so the step spends one pass
// on both. Each pair's arithmetic is the same either way (the same bits as two dispatches).

struct Params {
    rows: u32,
    heads: u32,
    d: u32,
    half: u32,
    max_pos: u32,
    heads2: u32, // heads of x2 (0: x alone)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (rows, heads*D), in place
@group(0) @binding(2) var<storage, read> pos: array<u32>;     // (rows)
@group(0) @binding(3) var<storage, read> cos_t: array<f32>;   // (P, D/2)
@group(0) @binding(4) var<storage, read> sin_t: array<f32>;   // (P, D/2)
@group(0) @binding(5) var<storage, read_write> x2: array<f32>; // (rows, heads2*D), in place

// Rotate pair n by `sign` times its angle: +1 the forward rotation, -1 its transpose (the
// backward of an orthogonal map is its transpose). Pairs past x's are x2's.
fn rotate(n_all: u32, sign: f32) {
    let n1 = p.rows * p.heads * p.half;
    let second = n_all >= n1;
    var n = n_all;
    var heads = p.heads;
    if (second) {
        n = n_all - n1;
        heads = p.heads2;
    }
    if (n >= p.rows * heads * p.half) { return; }
    let i = n % p.half;
    let rh = n / p.half; // row * heads + head
    let row = rh / heads;
    // A position past the table would read another buffer's memory on a robust-access-free
    // backend; the batch builder refuses such positions, this only keeps the read in bounds.
    let t = min(pos[row], p.max_pos - 1u) * p.half + i;
    let c = cos_t[t];
    let s = sign * sin_t[t];
    let lo = rh * p.d + i;
    let hi = lo + p.half;
    if (second) {
        let a = x2[lo];
        let b = x2[hi];
        x2[lo] = a * c - b * s;
        x2[hi] = b * c + a * s;
    } else {
        let a = x[lo];
        let b = x[hi];
        x[lo] = a * c - b * s;
        x[hi] = b * c + a * s;
    }
}

@compute @workgroup_size(WG)
fn rope_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    rotate(flat_id(gid, nwg, WG), 1.0);
}

@compute @workgroup_size(WG)
fn rope_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    rotate(flat_id(gid, nwg, WG), -1.0);
}
