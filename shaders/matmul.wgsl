// Matrix multiply C(M,N) = alpha * A(M,K) . B(K,N) [+ bias(N)] [+ resid(M,N)] [+ C], any shape.
//
// A and B are read through row and column strides, so the same kernel serves a Linear
// layer's forward (x . W^T), its input gradient (dy . W) and its weight gradient (dy^T . x),
// and GPT-2's Conv1D layout, without transposing anything in memory.
//
// Tiling: a 16x16 workgroup computes a 64x64 tile of C; each thread a 4x4 block whose rows
// and columns are 16 apart (so shared-memory reads are conflict-free and stores coalesce).
// The K dimension advances 16 at a time through workgroup memory.
// FLOPs 2*M*N*K; bytes ~ 4*(M*K*N/64 + K*N*M/64 + M*N) with 64x64 tiles.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,       // ACCUMULATE | HAS_BIAS | HAS_RESID
    a_rs: u32,        // A(m, k) = a[m * a_rs + k * a_cs]
    a_cs: u32,
    b_rs: u32,        // B(k, n) = b[k * b_rs + n * b_cs]
    b_cs: u32,
    alpha: f32,       // C = alpha * A . B [+ ...]; 1.0 leaves the product bit-identical
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N)
@group(0) @binding(4) var<storage, read> resid: array<f32>;  // (M, N)
@group(0) @binding(5) var<storage, read_write> c: array<f32>; // (M, N)

// HAS_BIAS, HAS_RESID and the tile shape TM x TN (depth TK) come from src/ops/matmul.rs.
var<workgroup> tile_a: array<f32, TK * TM>; // [TK][TM]
var<workgroup> tile_b: array<f32, TK * TN>; // [TK][TN]

// The one epilogue of every product entry point: C(m, n) = alpha * prod [+ bias(n)]
// [+ resid(m, n)] [+ C(m, n)], in this order (so the variants agree bit for bit).
fn store(m: u32, n: u32, prod: f32) {
    var v = prod * p.alpha;
    if ((p.flags & HAS_BIAS) != 0u) { v += bias[n]; }
    let o = m * p.n + n;
    if ((p.flags & HAS_RESID) != 0u) { v += resid[o]; }
    if ((p.flags & ACCUMULATE) != 0u) { v += c[o]; }
    c[o] = v;
}

@compute @workgroup_size(16, 16)
fn matmul_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    // Walk the tile in the order that makes consecutive threads read consecutive addresses.
    let a_k_fast = p.a_cs == 1u;
    let b_k_fast = p.b_rs == 1u;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            var mm: u32;
            var kk: u32;
            if (a_k_fast) { mm = e / TK; kk = e % TK; } else { kk = e / TM; mm = e % TM; }
            let gm = row0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                v = a[gm * p.a_rs + gk * p.a_cs];
            }
            tile_a[kk * TM + mm] = v;

            var nn: u32;
            if (b_k_fast) { nn = e / TK; kk = e % TK; } else { kk = e / TN; nn = e % TN; }
            let gn = col0 + nn;
            let gk2 = k0 + kk;
            var w = 0.0;
            if (gn < p.n && gk2 < p.k) {
                w = b[gk2 * p.b_rs + gn * p.b_cs];
            }
            tile_b[kk * TN + nn] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_a[kk * TM + lid.y + 16u * i];
                bv[i] = tile_b[kk * TN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(av[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = col0 + lid.x + 16u * j;
            if (m < p.m && n < p.n) { store(m, n, acc[i * 4u + j]); }
        }
    }
}

// A few rows (M <= 4: generation's one new token per sequence, where a 64x64 tile would
// waste 63 of its 64 rows): one thread per element of C, looping over K. Same strides and
// epilogue as the tiled kernel. FLOPs 2*M*N*K; bytes 4*(M*N*K + K*N + M*N) at most (each
// thread reads its row of A, which the cache shares, and its column of B).
@compute @workgroup_size(WG)
fn matmul_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.m * p.n) { return; }
    let m = i / p.n;
    let n = i % p.n;
    let a0 = m * p.a_rs;
    let b0 = n * p.b_cs;
    var v = 0.0;
    for (var kk = 0u; kk < p.k; kk++) {
        v = fma(a[a0 + kk * p.a_cs], b[kk * p.b_rs + b0], v);
    }
    store(m, n, v);
}

// The same product without workgroup memory: each thread accumulates its 4x4 block
// straight from global memory (through the cache). CPU-backed adapters (SwiftShader,
// lavapipe) pay dearly for every workgroupBarrier, and their "shared memory" is ordinary
// memory anyway, so this variant is several times faster there; real GPUs prefer the
// tiled kernel above. Same Params, bindings and results (the same fma order over k).
@compute @workgroup_size(16, 16)
fn matmul_forward_reg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = wid.y * TM + lid.y;
    let n0 = wid.x * TN + lid.x;
    // Clamp out-of-range rows/columns to a valid index: they compute garbage that is
    // never stored, and the inner loop stays free of bounds checks. Named scalars and
    // vec4 accumulators, not arrays: a software rasterizer's JIT keeps those in registers,
    // where dynamically indexed arrays become stack memory (a load and a store per fma).
    let a0 = min(m0, p.m - 1u) * p.a_rs;
    let a1 = min(m0 + 16u, p.m - 1u) * p.a_rs;
    let a2 = min(m0 + 32u, p.m - 1u) * p.a_rs;
    let a3 = min(m0 + 48u, p.m - 1u) * p.a_rs;
    let b0 = min(n0, p.n - 1u) * p.b_cs;
    let b1 = min(n0 + 16u, p.n - 1u) * p.b_cs;
    let b2 = min(n0 + 32u, p.n - 1u) * p.b_cs;
    let b3 = min(n0 + 48u, p.n - 1u) * p.b_cs;
    // acc_i[j] = sum_k A(m0 + 16i, k) B(k, n0 + 16j), one fma per k in k order.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        let ak = k * p.a_cs;
        let bk = k * p.b_rs;
        let bv = vec4<f32>(b[b0 + bk], b[b1 + bk], b[b2 + bk], b[b3 + bk]);
        acc0 = fma(vec4<f32>(a[a0 + ak]), bv, acc0);
        acc1 = fma(vec4<f32>(a[a1 + ak]), bv, acc1);
        acc2 = fma(vec4<f32>(a[a2 + ak]), bv, acc2);
        acc3 = fma(vec4<f32>(a[a3 + ak]), bv, acc3);
    }
    store_row4(m0, n0, acc0);
    store_row4(m0 + 16u, n0, acc1);
    store_row4(m0 + 32u, n0, acc2);
    store_row4(m0 + 48u, n0, acc3);
}

// C(m, n0 + 16j) for j = 0..3, where in range.
fn store_row4(m: u32, n0: u32, v: vec4<f32>) {
    if (m >= p.m) { return; }
    if (n0 < p.n) { store(m, n0, v.x); }
    if (n0 + 16u < p.n) { store(m, n0 + 16u, v.y); }
    if (n0 + 32u < p.n) { store(m, n0 + 32u, v.z); }
    if (n0 + 48u < p.n) { store(m, n0 + 48u, v.w); }
}
