// Prepended to every kernel file, after the constants shared with Rust (WG, ACCUMULATE
// and the kernel's own; see `Kernel::source` in src/gpu/encoder.rs).
//
// ACCUMULATE is the flags bit of kernels that can accumulate into their output (gradient
// accumulation adds into a gradient instead of overwriting it).

// The flat thread index of a 1-D launch folded into (x, y) workgroups by `grid_1d`
// (a dimension holds at most 65535 workgroups). `wg` is the workgroup width.
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.y * (nwg.x * wg) + gid.x;
}

// ---- workgroup tree reductions ----------------------------------------------------------
// Over a workgroup of WG threads (a power of two), `t` the local invocation index. Each
// is a fixed tree, pairs (i, i + h) for h = WG/2, WG/4, ..., 1, so the same inputs always
// give the same bits. Call from uniform control flow (every thread of the workgroup, no
// thread returned early). Every thread gets the result; the trailing barrier lets the
// caller reduce again at once. An entry point allocates only the workgroup arrays it
// uses, so a kernel without reductions pays nothing for these.

var<workgroup> wg_red: array<f32, WG>;
var<workgroup> wg_red2: array<vec2<f32>, WG>;
var<workgroup> wg_red_u: array<u32, WG>;

// The sum of `v` over the workgroup.
fn wg_sum(v: f32, t: u32) -> f32 {
    wg_red[t] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (t < h) { wg_red[t] += wg_red[t + h]; }
        workgroupBarrier();
    }
    let r = wg_red[0];
    workgroupBarrier();
    return r;
}

// Two sums at once (one tree, one barrier per level).
fn wg_sum2(v: vec2<f32>, t: u32) -> vec2<f32> {
    wg_red2[t] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (t < h) { wg_red2[t] += wg_red2[t + h]; }
        workgroupBarrier();
    }
    let r = wg_red2[0];
    workgroupBarrier();
    return r;
}

// The bitwise or of `v` over the workgroup.
fn wg_or(v: u32, t: u32) -> u32 {
    wg_red_u[t] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (t < h) { wg_red_u[t] |= wg_red_u[t + h]; }
        workgroupBarrier();
    }
    let r = wg_red_u[0];
    workgroupBarrier();
    return r;
}

// The merge of online-softmax partials ms = (running max m, sum of exp(x - m)) over the
// workgroup: (max, sum of exp(x - max)) of all of them. Two partials merge as
// (mm, s * exp(m - mm) + s2 * exp(m2 - mm)), mm = max(m, m2); a thread that saw nothing
// holds a finite lowest m and s = 0, so merging it never computes exp(-inf - -inf).
fn wg_max_sum(ms: vec2<f32>, t: u32) -> vec2<f32> {
    var m = ms.x;
    var s = ms.y;
    wg_red2[t] = ms;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (t < h) {
            let o = wg_red2[t + h];
            let mm = max(m, o.x);
            s = s * exp(m - mm) + o.y * exp(o.x - mm);
            m = mm;
            wg_red2[t] = vec2(m, s);
        }
        workgroupBarrier();
    }
    let r = wg_red2[0];
    workgroupBarrier();
    return r;
}

// ---- SwiGLU (shaders/swiglu.wgsl, and the matmul epilogue that fuses it) --------------
//   silu(g) = g * sigmoid(g);  silu'(g) = s * (1 + g * (1 - s)),  s = sigmoid(g)

// (sigmoid(v), 1 - sigmoid(v)), each without cancellation (1 - s computed by subtraction
// loses all its digits for large v), and with exp of a non-positive argument only, so no
// intermediate overflows to infinity (which WGSL lets an implementation assume never happens).
fn sigmoid2(v: f32) -> vec2<f32> {
    let e = exp(-abs(v));
    let q = 1.0 / (1.0 + e);
    return select(vec2(e * q, q), vec2(q, e * q), v >= 0.0);
}

// silu(g) * u
fn swiglu_out(g: f32, u: f32) -> f32 {
    return g * sigmoid2(g).x * u;
}

// (dgate, dup) = (d * u * silu'(g), d * silu(g))
fn swiglu_grads(g: f32, u: f32, d: f32) -> vec2<f32> {
    let s = sigmoid2(g);
    return vec2(d * u * s.x * (1.0 + g * s.y), d * g * s.x);
}
