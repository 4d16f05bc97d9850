// The LoRA products of sibling adapters, layers that share one input x (a block's q, k, v
// projections; a gated MLP's gate and up), up to three in one dispatch (CPU adapters'
// dispatch economy; `ops::lora_siblings`):
//   forward:  u_j(rows, R)   = x(rows, C) . A_j^T           (A_j (R, C))
//   backward: dA_j(R, C)    += s * g_j^T(R, rows) . x(rows, C)
// The adapters' A (or dA) sit in one parameter arena: `wa` / `da` is bound as a view that
// spans them, A_j at element a_off[j]. One thread per output, sibling by sibling; each sums
// over k in k order with fma and ends as the matmul family's epilogue does (u = prod;
// dA = prod * s + dA), so the bits are those of `matmul_dot` on each product (the kernel
// the CPU column of `ops::matmul::choose` picks for them).
// FLOPs 2*n*rows*R*C each way; bytes 4*n*(rows*C*R + R*C + rows*R) at most.

struct Params {
    rows: u32,
    c: u32,
    r: u32,
    n: u32,           // siblings, 1 to 3
    a_off: vec4<u32>, // A_j's (dA_j's) element offset in wa (da)
    scale: f32,       // s (backward)
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> x: array<f32>;        // (rows, C)
@group(0) @binding(2) var<storage, read> wa: array<f32>;       // A_j (R, C) at a_off[j]
@group(0) @binding(3) var<storage, read_write> u0: array<f32>; // (rows, R)
@group(0) @binding(4) var<storage, read_write> u1: array<f32>; // (rows, R)
@group(0) @binding(5) var<storage, read_write> u2: array<f32>; // (rows, R)

@compute @workgroup_size(WG)
fn lora_siblings_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    let per = p.rows * p.r;
    let j = i / per;
    if (j >= p.n) { return; }
    let e = i % per;
    let m = e / p.r;
    let n = e % p.r;
    let a0 = p.a_off[j] + n * p.c;
    var v = 0.0;
    for (var k = 0u; k < p.c; k++) {
        v = fma(x[m * p.c + k], wa[a0 + k], v);
    }
    if (j == 0u) { u0[e] = v; } else if (j == 1u) { u1[e] = v; } else { u2[e] = v; }
}

@group(0) @binding(1) var<storage, read> bx: array<f32>;       // (rows, C)
@group(0) @binding(2) var<storage, read> g0: array<f32>;       // (rows, R)
@group(0) @binding(3) var<storage, read> g1: array<f32>;       // (rows, R)
@group(0) @binding(4) var<storage, read> g2: array<f32>;       // (rows, R)
@group(0) @binding(5) var<storage, read_write> da: array<f32>; // dA_j (R, C) at a_off[j]

@compute @workgroup_size(WG)
fn lora_siblings_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    let per = p.r * p.c;
    let j = i / per;
    if (j >= p.n) { return; }
    let e = i % per;
    let r = e / p.c;
    let c = e % p.c;
    var v = 0.0;
    for (var k = 0u; k < p.rows; k++) {
        var gv = g0[k * p.r + r];
        if (j == 1u) { gv = g1[k * p.r + r]; } else if (j == 2u) { gv = g2[k * p.r + r]; }
        v = fma(gv, bx[k * p.c + c], v);
    }
    let o = p.a_off[j] + e;
    var acc = v * p.scale;
    acc += da[o];
    da[o] = acc;
}
