// The matmul family: C(M,N) = alpha * op(A)(M,K) . op(B)(K,N) [+ bias(N)] [+ resid(M,N)]
// [+ C] [+ s * U(M,R) . LB(N,R)^T], any shape. src/ops/matmul.rs picks the entry point per
// shape and adapter from one table (`choose`) and builds one pipeline per layout.
//
// Layout specialization: A_T, B_T (operand stored transposed) and C_T (the output written
// transposed, so a product with few rows runs as its transpose) are prelude constants, one
// pipeline per combination, so no runtime stride sits in an inner loop. For a Linear layer
// x . W^T is (A_T, B_T) = (0, 1), dy . W is (0, 0) and dy^T . x is (1, 0).
//
// The B operand is read as u32 words through `b_at`, so that a frozen weight kept compact
// on the GPU (GGUF blocks, f16/bf16: the WFMT constant, shaders/quant.wgsl) is one more
// specialization of the same kernels rather than a copy of them.
//
// Every entry point ends in the one epilogue `store`, and every product sums over k in
// k order with fma, except `matmul_skinny`, which splits K across threads and adds the
// parts in a fixed tree order (deterministic; within f32 rounding of the others).
//
// Split-K across workgroups (`matmul_large`, `matmul_tiled`, the skinny kernels): workgroup z takes k in
// [z * KSPLIT, (z + 1) * KSPLIT) in k order and writes its partial product, alpha applied
// and nothing else, to slice z of C (then a (ranges, M, N) scratch); src/ops/matmul.rs adds
// the slices in z order (shaders/bias.wgsl's colsum_finish) into the real C. Unsplit, one
// range holds all of K.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,       // ACCUMULATE | HAS_BIAS | HAS_RESID | HAS_LORA | LORA_BT | SWIGLU_FWD | SWIGLU_BWD
    r: u32,           // R, the LoRA rank of the fused epilogue
    ksplit: u32,      // k per workgroup along z (split-K); >= K when unsplit
    alpha: f32,       // C = alpha * A . B [+ ...]; 1.0 leaves the product bit-identical
    lora_scale: f32,  // s of the fused LoRA epilogue
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;     // B, as f32 bits
@group(0) @binding(3) var<storage, read> bias: array<f32>;   // (N); SWIGLU_BWD: up (M, N)
@group(0) @binding(4) var<storage, read> resid: array<f32>;  // (M, N); SWIGLU_*: gate (M, N)
@group(0) @binding(5) var<storage, read_write> c: array<f32>; // (M, N), or (N, M) when C_T
@group(0) @binding(6) var<storage, read> lu: array<f32>;     // (M, R) LoRA's u = drop(x) A^T
@group(0) @binding(7) var<storage, read> lb: array<f32>;     // (N, R), or (R, N) when LORA_BT
// SWIGLU_FWD: act (M, N); SWIGLU_BWD: dup (M, N); otherwise a spare, never touched.
// (The SwiGLU operands reuse the bias and resid bindings, which those products do not
// use: WebGPU's default limit is 8 storage buffers per stage, and this is the 8th.)
@group(0) @binding(8) var<storage, read_write> c2: array<f32>;

// Where this workgroup's C starts: slice z of a split product's scratch (`k_range`).
var<private> c_base: u32;

// This workgroup's range of k, [lo, hi): the z-th of KSPLIT each (all of K unsplit), its
// partial product stored from slice z of C on.
fn k_range(z: u32) -> vec2<u32> {
    c_base = z * p.m * p.n;
    let lo = min(z * p.ksplit, p.k);
    return vec2<u32>(lo, min(p.k - lo, p.ksplit) + lo);
}

// op(A)(m, k): A stored (M, K), or (K, M) when A_T.
fn a_at(m: u32, k: u32) -> f32 {
    if (A_T == 0u) { return a[m * p.k + k]; }
    return a[k * p.m + m];
}

// op(B)(k, n): B stored (K, N), or (N, K) when B_T, in the pipeline's format WFMT (f32
// words, or a frozen weight's GGUF blocks / f16 halves, dequantized by shaders/quant.wgsl
// to the host dequantizer's bits).
fn b_at(k: u32, n: u32) -> f32 {
    if (B_T == 0u) { return wq_get(k, n, p.n); }
    return wq_get(n, k, p.k);
}

// The one epilogue: C(m, n) = alpha * prod [+ bias(n)] [+ resid(m, n)] [+ C(m, n)]
// [+ s * sum_r U(m, r) LB(n, r)] (LB stored (R, N) when LORA_BT: LoRA's A in the input
// gradient dx = dy W + s g A), in this order, which is the order of the unfused
// product followed by an accumulating LoRA product (so fusing changes no bit).
// Then a gated MLP's SwiGLU, with common.wgsl's arithmetic (the bits of shaders/swiglu.wgsl):
// SWIGLU_FWD (the up projection): C = v = up, and c2 = act = silu(gate) * up;
// SWIGLU_BWD (the down projection's input gradient): v = dact, C = dgate and c2 = dup.
// Neither comes with bias, resid, ACCUMULATE or C_T (their bindings hold the operands).
fn store(m: u32, n: u32, prod: f32) {
    var v = prod * p.alpha;
    if ((p.flags & HAS_BIAS) != 0u) { v += bias[n]; }
    var o = m * p.n + n;
    if (C_T != 0u) { o = n * p.m + m; }
    if ((p.flags & HAS_RESID) != 0u) { v += resid[o]; }
    if ((p.flags & ACCUMULATE) != 0u) { v += c[c_base + o]; }
    if ((p.flags & HAS_LORA) != 0u) {
        var l = 0.0;
        for (var r = 0u; r < p.r; r++) {
            var bi = n * p.r + r;
            if ((p.flags & LORA_BT) != 0u) { bi = r * p.n + n; }
            l = fma(lu[m * p.r + r], lb[bi], l);
        }
        v = p.lora_scale * l + v;
    }
    if ((p.flags & SWIGLU_FWD) != 0u) {
        c2[o] = swiglu_out(resid[o], v);
    }
    if ((p.flags & SWIGLU_BWD) != 0u) {
        let dg = swiglu_grads(resid[o], bias[o], v);
        c2[o] = dg.y;
        v = dg.x;
    }
    c[c_base + o] = v;
}

// ---- Large products on GPUs: 128 x 64 tiles, 8 x 4 outputs per thread ----------------
// 256 threads (16 x 16). The K loop is double-buffered through registers: the next tile's
// global loads are issued before the current tile's fmas, and stored to workgroup memory
// after them. Tiles are k-major with a row padding of 4 floats, so the k-fast global loads
// of a K-contiguous operand store without bank conflicts, and threads read B as vec4s.
// FLOPs 2*M*N*K; bytes ~ 4*(M*K*N/64 + K*N*M/128 + M*N).
// The tiles hold `tile_t`, which Rust's prelude aliases: f32 (every adapter), or f16 for
// the shader-f16 variant (`Variant::LargeH`): half the workgroup memory and half its read
// traffic, which caps this kernel; the operands are rounded to f16 as they are staged and
// the products still summed in f32, in k order. (f32(x) of an f32 is x: the f32 kernel's
// bits do not depend on the alias.)
const L_TM: u32 = 128u;
const L_TN: u32 = 64u;
const L_TK: u32 = 16u;
const L_PA: u32 = L_TM + 4u; // padded row of tile_la
const L_PB: u32 = L_TN + 4u; // padded row of tile_lb
var<workgroup> tile_la: array<tile_t, L_TK * L_PA>;        // [TK][TM + 4]
var<workgroup> tile_lb: array<vec4<tile_t>, L_TK * L_PB / 4u>; // [TK][(TN + 4) / 4]

// Out-of-range loads read a clamped, valid index and are replaced by 0.
// Element e (of TK * TM) of A's next tile: its (row, k) in the tile, in the order that
// makes consecutive threads read consecutive addresses of the stored operand.
fn la_coord(e: u32) -> vec2<u32> {
    if (A_T == 0u) { return vec2<u32>(e / L_TK, e % L_TK); }
    return vec2<u32>(e % L_TM, e / L_TM);
}

fn lb_coord(e: u32) -> vec2<u32> {
    if (B_T == 1u) { return vec2<u32>(e / L_TK, e % L_TK); }
    return vec2<u32>(e % L_TN, e / L_TN);
}

@compute @workgroup_size(16, 16)
fn matmul_large(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * L_TM;
    let col0 = wid.x * L_TN;
    let tid = lid.y * 16u + lid.x;
    let kr = k_range(wid.z);
    var acc: array<vec4<f32>, 8>; // acc[i] = C(row0 + lid.y + 16 i, col0 + 4 lid.x + 0..3)
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    var ra: array<f32, 8>; // this thread's share of the next A tile (8 of 2048)
    var rb: array<f32, 4>; // and of the next B tile (4 of 1024)
    for (var i = 0u; i < 8u; i++) {
        let q = la_coord(tid + i * 256u);
        ra[i] = select(0.0, a_at(min(row0 + q.x, p.m - 1u), min(kr.x + q.y, p.k - 1u)), row0 + q.x < p.m && kr.x + q.y < kr.y);
    }
    for (var i = 0u; i < 4u; i++) {
        let q = lb_coord(tid + i * 256u);
        rb[i] = select(0.0, b_at(min(kr.x + q.y, p.k - 1u), min(col0 + q.x, p.n - 1u)), col0 + q.x < p.n && kr.x + q.y < kr.y);
    }
    for (var k0 = kr.x; k0 < kr.y; k0 += L_TK) {
        for (var i = 0u; i < 8u; i++) {
            let q = la_coord(tid + i * 256u);
            tile_la[q.y * L_PA + q.x] = tile_t(ra[i]);
        }
        for (var i = 0u; i < 4u; i++) {
            let q = lb_coord(tid + i * 256u);
            let slot = q.y * L_PB + q.x;
            tile_lb[slot / 4u][slot % 4u] = tile_t(rb[i]);
        }
        workgroupBarrier();
        // The next tile's loads, in flight during this tile's fmas.
        let k1 = k0 + L_TK;
        if (k1 < kr.y) {
            for (var i = 0u; i < 8u; i++) {
                let q = la_coord(tid + i * 256u);
                ra[i] = select(0.0, a_at(min(row0 + q.x, p.m - 1u), min(k1 + q.y, p.k - 1u)), row0 + q.x < p.m && k1 + q.y < kr.y);
            }
            for (var i = 0u; i < 4u; i++) {
                let q = lb_coord(tid + i * 256u);
                rb[i] = select(0.0, b_at(min(k1 + q.y, p.k - 1u), min(col0 + q.x, p.n - 1u)), col0 + q.x < p.n && k1 + q.y < kr.y);
            }
        }
        for (var kk = 0u; kk < L_TK; kk++) {
            let bv = vec4<f32>(tile_lb[(kk * L_PB) / 4u + lid.x]);
            for (var i = 0u; i < 8u; i++) {
                acc[i] = fma(vec4<f32>(f32(tile_la[kk * L_PA + lid.y + 16u * i])), bv, acc[i]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let m = row0 + lid.y + 16u * i;
        let n = col0 + 4u * lid.x;
        if (m < p.m) {
            for (var j = 0u; j < 4u; j++) {
                if (n + j < p.n) { store(m, n + j, acc[i][j]); }
            }
        }
    }
}

// ---- Medium products on GPUs: 64 x 64 tiles, 4 x 4 outputs per thread ----------------
// 16 x 16 threads; each output block's rows and columns are 16 apart (conflict-free reads).
// For products too small to fill a GPU with 128 x 64 tiles.
// FLOPs 2*M*N*K; bytes ~ 4*(M*K*N/64 + K*N*M/64 + M*N).
const M_T: u32 = 64u;
const M_TK: u32 = 16u;
const M_P: u32 = M_T + 1u; // padded row: k-fast stores hit distinct banks
var<workgroup> tile_ma: array<f32, M_TK * M_P>; // [TK][TM + 1]
var<workgroup> tile_mb: array<f32, M_TK * M_P>; // [TK][TN + 1]

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * M_T;
    let col0 = wid.x * M_T;
    let tid = lid.y * 16u + lid.x;
    let kr = k_range(wid.z);
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = kr.x; k0 < kr.y; k0 += M_TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            var mm: u32;
            var kk: u32;
            if (A_T == 0u) { mm = e / M_TK; kk = e % M_TK; } else { kk = e / M_T; mm = e % M_T; }
            let av = a_at(min(row0 + mm, p.m - 1u), min(k0 + kk, p.k - 1u));
            tile_ma[kk * M_P + mm] = select(0.0, av, row0 + mm < p.m && k0 + kk < kr.y);
            var nn: u32;
            if (B_T == 1u) { nn = e / M_TK; kk = e % M_TK; } else { kk = e / M_T; nn = e % M_T; }
            let bv = b_at(min(k0 + kk, p.k - 1u), min(col0 + nn, p.n - 1u));
            tile_mb[kk * M_P + nn] = select(0.0, bv, col0 + nn < p.n && k0 + kk < kr.y);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < M_TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_ma[kk * M_P + lid.y + 16u * i];
                bv[i] = tile_mb[kk * M_P + lid.x + 16u * i];
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

// ---- Skinny products (N <= 16: LoRA's u = x A^T, g = dy B, dB; dA as its transpose) ----
// A 64 x 64 tile would be mostly padding, and a thread per output walks all of K alone.
// Here 256 threads take 16 rows; the 16 threads of a row split K into 16 interleaved
// slices, each keeps all N (<= 16) sums of its slice, and the slices are added in a fixed
// tree order through workgroup memory, 4 columns at a time. M/16 workgroups.
// FLOPs 2*M*N*K; bytes 4*(M*K + (M/16)*K*N + M*N).
const S_N: u32 = 16u;
var<workgroup> skinny_part: array<vec4<f32>, 256>; // [row 16][slice 16], 4 columns

// Thread tid's (row, slice, distance between a row's slices in tid). The fast thread index
// walks the operand's contiguous dimension: k for a k-fast A, rows for a transposed one.
fn skinny_lane(tid: u32) -> vec3<u32> {
    if (A_T == 1u) { return vec3<u32>(tid % 16u, tid / 16u, 16u); }
    return vec3<u32>(tid / 16u, tid % 16u, 1u);
}

// The N (<= 16) sums of row mc over this slice's k in the workgroup's range kr (kr.x +
// slice, kr.x + slice + 16, ...), in k order.
fn skinny_slice_sums(mc: u32, slice: u32, kr: vec2<u32>) -> array<f32, 16> {
    var acc: array<f32, 16>;
    for (var j = 0u; j < S_N; j++) {
        acc[j] = 0.0;
    }
    for (var k = kr.x + slice; k < kr.y; k += 16u) {
        let av = a_at(mc, k);
        for (var j = 0u; j < S_N; j++) {
            if (j < p.n) { acc[j] = fma(av, b_at(k, j), acc[j]); }
        }
    }
    return acc;
}

// Columns j0..j0+3 of a slice's sums (past N: repeats that are never stored).
fn skinny_cols4(acc: array<f32, 16>, j0: u32) -> vec4<f32> {
    return vec4<f32>(acc[j0], acc[min(j0 + 1u, 15u)], acc[min(j0 + 2u, 15u)], acc[min(j0 + 3u, 15u)]);
}

fn skinny_store(m: u32, j0: u32, s: vec4<f32>) {
    if (m >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (j0 + j < p.n) { store(m, j0 + j, s[j]); }
    }
}

@compute @workgroup_size(256)
fn matmul_skinny(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let lane = skinny_lane(tid);
    let row = lane.x;
    let slice = lane.y;
    let m = wid.x * 16u + row;
    let acc = skinny_slice_sums(min(m, p.m - 1u), slice, k_range(wid.z)); // rows past M: never stored
    let me = row * 16u + slice;
    for (var j0 = 0u; j0 < p.n; j0 += 4u) {
        skinny_part[me] = skinny_cols4(acc, j0);
        workgroupBarrier();
        for (var w = 8u; w > 0u; w >>= 1u) {
            if (slice < w) { skinny_part[me] += skinny_part[me + w]; }
            workgroupBarrier();
        }
        if (slice == 0u) { skinny_store(m, j0, skinny_part[me]); }
        workgroupBarrier();
    }
}

// ---- One thread per output: few rows (generation's one new token per sequence), and
// skinny products on CPU adapters, where barriers cost more than the lost parallelism.
// FLOPs 2*M*N*K; bytes 4*(M*N*K + K*N + M*N) at most (the cache shares A's rows).
@compute @workgroup_size(WG)
fn matmul_dot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.m * p.n) { return; }
    // Consecutive threads take consecutive outputs in the order C is stored.
    var m = i / p.n;
    var n = i % p.n;
    if (C_T != 0u) { m = i % p.m; n = i / p.m; }
    var v = 0.0;
    for (var kk = 0u; kk < p.k; kk++) {
        v = fma(a_at(m, kk), b_at(kk, n), v);
    }
    store(m, n, v);
}

// ---- CPU adapters (SwiftShader, lavapipe): the tile product without workgroup memory --
// Each thread accumulates its 4x4 block straight from global memory through the cache.
// CPU rasterizers pay dearly for every workgroupBarrier and their "shared memory" is
// ordinary memory, so this runs several times faster there.
// FLOPs 2*M*N*K; bytes as matmul_tiled.
//
// A compact B (WFMT != FMT_F32) is decoded four values at a time with wq_get4, so a
// block's scale is decoded once per four values instead of once per value (per-value
// decoding made a Q4_1 step several times slower than f32 on SwiftShader). wq_get4 reads
// four consecutive values of one stored row: along k when B_T (x . W^T: k unrolled by 4),
// along n otherwise (dy . W: the thread's four columns are consecutive, REG_NSTEP = 1).
// Either way each output still sums its k in k order with one fma per k, so the bits are
// those of the scalar loop.
const REG_Q: bool = WFMT != FMT_F32;
// Columns of one thread: n0 + REG_NSTEP * j, j = 0..3.
const REG_NSTEP: u32 = select(16u, 1u, REG_Q && B_T == 0u);

@compute @workgroup_size(16, 16)
fn matmul_reg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = wid.y * 64u + lid.y;
    var n0 = wid.x * 64u + lid.x;
    if (REG_NSTEP == 1u) { n0 = wid.x * 64u + 4u * lid.x; }
    // Out-of-range rows/columns are clamped to a valid index: they compute garbage that is
    // never stored, and the inner loop stays free of bounds checks. Named scalars and vec4
    // accumulators, not arrays: a software rasterizer's JIT keeps those in registers, where
    // dynamically indexed arrays become stack memory (a load and a store per fma).
    let r0 = min(m0, p.m - 1u);
    let r1 = min(m0 + 16u, p.m - 1u);
    let r2 = min(m0 + 32u, p.m - 1u);
    let r3 = min(m0 + 48u, p.m - 1u);
    let c0 = min(n0, p.n - 1u);
    let c1 = min(n0 + REG_NSTEP, p.n - 1u);
    let c2 = min(n0 + 2u * REG_NSTEP, p.n - 1u);
    let c3 = min(n0 + 3u * REG_NSTEP, p.n - 1u);
    // acc_i[j] = sum_k A(m0 + 16i, k) B(k, n0 + REG_NSTEP j), one fma per k in k order.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var k = 0u;
    if (REG_Q && B_T != 0u) {
        // B(k .. k+3, c) = row c of W, values k .. k+3. K is a whole number of blocks for
        // the block formats; f16/bf16 rows may end in 1-3 values, left to the scalar loop.
        for (; k + 4u <= p.k; k += 4u) {
            let w0 = wq_get4(c0, k, p.k);
            let w1 = wq_get4(c1, k, p.k);
            let w2 = wq_get4(c2, k, p.k);
            let w3 = wq_get4(c3, k, p.k);
            let b0 = vec4(w0.x, w1.x, w2.x, w3.x);
            let b1 = vec4(w0.y, w1.y, w2.y, w3.y);
            let b2 = vec4(w0.z, w1.z, w2.z, w3.z);
            let b3 = vec4(w0.w, w1.w, w2.w, w3.w);
            acc0 = fma(vec4<f32>(a_at(r0, k)), b0, acc0);
            acc1 = fma(vec4<f32>(a_at(r1, k)), b0, acc1);
            acc2 = fma(vec4<f32>(a_at(r2, k)), b0, acc2);
            acc3 = fma(vec4<f32>(a_at(r3, k)), b0, acc3);
            acc0 = fma(vec4<f32>(a_at(r0, k + 1u)), b1, acc0);
            acc1 = fma(vec4<f32>(a_at(r1, k + 1u)), b1, acc1);
            acc2 = fma(vec4<f32>(a_at(r2, k + 1u)), b1, acc2);
            acc3 = fma(vec4<f32>(a_at(r3, k + 1u)), b1, acc3);
            acc0 = fma(vec4<f32>(a_at(r0, k + 2u)), b2, acc0);
            acc1 = fma(vec4<f32>(a_at(r1, k + 2u)), b2, acc1);
            acc2 = fma(vec4<f32>(a_at(r2, k + 2u)), b2, acc2);
            acc3 = fma(vec4<f32>(a_at(r3, k + 2u)), b2, acc3);
            acc0 = fma(vec4<f32>(a_at(r0, k + 3u)), b3, acc0);
            acc1 = fma(vec4<f32>(a_at(r1, k + 3u)), b3, acc1);
            acc2 = fma(vec4<f32>(a_at(r2, k + 3u)), b3, acc2);
            acc3 = fma(vec4<f32>(a_at(r3, k + 3u)), b3, acc3);
        }
    }
    if (REG_NSTEP == 1u && p.n % 4u == 0u) {
        // B(k, c0 .. c0+3) = row k of W, values c0 .. c0+3 (c0 = min(n0, N - 1) may land
        // mid-group only for threads past the last column; clamp to the last group).
        let cq = min(n0, p.n - 4u);
        for (; k < p.k; k++) {
            let bv = wq_get4(k, cq, p.n);
            acc0 = fma(vec4<f32>(a_at(r0, k)), bv, acc0);
            acc1 = fma(vec4<f32>(a_at(r1, k)), bv, acc1);
            acc2 = fma(vec4<f32>(a_at(r2, k)), bv, acc2);
            acc3 = fma(vec4<f32>(a_at(r3, k)), bv, acc3);
        }
    }
    for (; k < p.k; k++) {
        let bv = vec4<f32>(b_at(k, c0), b_at(k, c1), b_at(k, c2), b_at(k, c3));
        acc0 = fma(vec4<f32>(a_at(r0, k)), bv, acc0);
        acc1 = fma(vec4<f32>(a_at(r1, k)), bv, acc1);
        acc2 = fma(vec4<f32>(a_at(r2, k)), bv, acc2);
        acc3 = fma(vec4<f32>(a_at(r3, k)), bv, acc3);
    }
    store_row4(m0, n0, acc0);
    store_row4(m0 + 16u, n0, acc1);
    store_row4(m0 + 32u, n0, acc2);
    store_row4(m0 + 48u, n0, acc3);
}

// C(m, n0 + REG_NSTEP j) for j = 0..3, where in range.
fn store_row4(m: u32, n0: u32, v: vec4<f32>) {
    if (m >= p.m) { return; }
    if (n0 < p.n) { store(m, n0, v.x); }
    if (n0 + REG_NSTEP < p.n) { store(m, n0 + REG_NSTEP, v.y); }
    if (n0 + 2u * REG_NSTEP < p.n) { store(m, n0 + 2u * REG_NSTEP, v.z); }
    if (n0 + 3u * REG_NSTEP < p.n) { store(m, n0 + 3u * REG_NSTEP, v.w); }
}

// ---- CPU adapters, vec4 operands: matmul_reg with every load four values wide ---------
// A software rasterizer runs a workgroup's threads in SIMD lanes and pays per load
// instruction (each lane's address is gathered), not per byte: matmul_reg spends 8 scalar
// loads on a k step's 16 fmas, these kernels 2 vec4 loads. Each thread keeps a 4x4 block
// of 4 consecutive rows and 4 consecutive columns, and each operand is read as vec4s along
// its contiguous dimension: along k for x . W^T's two operands and dy . W's A, along the
// columns for dy . W's B, and along rows and columns for dy^T . x. The same k order and
// one fma per k as every other kernel, so the same bits. `choose` sends a product here
// only where those vec4s are whole: K % 4 == 0 for a k-contiguous A, N % 4 == 0
// (M % 4 == 0) for a B (A) read across columns (rows); the bindings (256-byte aligned
// views) then put every vec4 on a 16-byte boundary. Two entry points, one per kind of B:
// matmul_reg4 reads f32 words through a vec4 view of B's binding, matmul_reg4q a compact
// weight through its dequantizer (one entry point may not hold two views of a binding).
// FLOPs 2*M*N*K; bytes as matmul_tiled.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wq4: array<vec4<u32>>; // B (f32 bits) as vec4s

// A thread's 4x4 block: r_i[j] = C(m0 + i, n0 + j) before the epilogue.
struct Block4 {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// The thread's rows and columns, clamped like matmul_reg's: out-of-range ones compute
// garbage that is never stored. A group of 4 read as one vec4 is clamped whole
// (`rq`, `cq`: its dimension is then a multiple of 4).
struct Tile4 {
    m0: u32,
    n0: u32,
    rows: vec4<u32>,
    cols: vec4<u32>,
    rq: u32,
    cq: u32,
}

fn tile4(wid: vec3<u32>, lid: vec3<u32>) -> Tile4 {
    let m0 = wid.y * 64u + 4u * lid.y;
    let n0 = wid.x * 64u + 4u * lid.x;
    let i = vec4(0u, 1u, 2u, 3u);
    return Tile4(m0, n0, min(vec4(m0) + i, vec4(p.m - 1u)), min(vec4(n0) + i, vec4(p.n - 1u)),
        min(m0, max(p.m, 4u) - 4u), min(n0, max(p.n, 4u) - 4u));
}

// acc += A(rows, k .. k+3) . B(k .. k+3, n0 .. n0+3), b_kk = B(k + kk, n0 .. n0+3), in k
// order (an A stored (M, K)).
fn reg4_k4(acc: Block4, rows: vec4<u32>, k: u32, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> Block4 {
    let a0 = a4[(rows.x * p.k + k) / 4u];
    let a1 = a4[(rows.y * p.k + k) / 4u];
    let a2 = a4[(rows.z * p.k + k) / 4u];
    let a3 = a4[(rows.w * p.k + k) / 4u];
    var o = acc;
    o.r0 = fma(vec4<f32>(a0.x), b0, o.r0);
    o.r1 = fma(vec4<f32>(a1.x), b0, o.r1);
    o.r2 = fma(vec4<f32>(a2.x), b0, o.r2);
    o.r3 = fma(vec4<f32>(a3.x), b0, o.r3);
    o.r0 = fma(vec4<f32>(a0.y), b1, o.r0);
    o.r1 = fma(vec4<f32>(a1.y), b1, o.r1);
    o.r2 = fma(vec4<f32>(a2.y), b1, o.r2);
    o.r3 = fma(vec4<f32>(a3.y), b1, o.r3);
    o.r0 = fma(vec4<f32>(a0.z), b2, o.r0);
    o.r1 = fma(vec4<f32>(a1.z), b2, o.r1);
    o.r2 = fma(vec4<f32>(a2.z), b2, o.r2);
    o.r3 = fma(vec4<f32>(a3.z), b2, o.r3);
    o.r0 = fma(vec4<f32>(a0.w), b3, o.r0);
    o.r1 = fma(vec4<f32>(a1.w), b3, o.r1);
    o.r2 = fma(vec4<f32>(a2.w), b3, o.r2);
    o.r3 = fma(vec4<f32>(a3.w), b3, o.r3);
    return o;
}

// reg4_k4 from B's four columns along k: w_j = B(k .. k+3, n0 + j) (rows of a W stored
// (N, K)), transposed into the b_kk.
fn reg4_k4t(acc: Block4, rows: vec4<u32>, k: u32, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> Block4 {
    return reg4_k4(acc, rows, k, vec4(w0.x, w1.x, w2.x, w3.x), vec4(w0.y, w1.y, w2.y, w3.y),
        vec4(w0.z, w1.z, w2.z, w3.z), vec4(w0.w, w1.w, w2.w, w3.w));
}

// acc += A(rq .. rq+3, k) B(k, n0 .. n0+3) (an A stored (K, M): dy^T . x).
fn reg4_k1(acc: Block4, rq: u32, k: u32, bv: vec4<f32>) -> Block4 {
    let av = a4[(k * p.m + rq) / 4u];
    var o = acc;
    o.r0 = fma(vec4<f32>(av.x), bv, o.r0);
    o.r1 = fma(vec4<f32>(av.y), bv, o.r1);
    o.r2 = fma(vec4<f32>(av.z), bv, o.r2);
    o.r3 = fma(vec4<f32>(av.w), bv, o.r3);
    return o;
}

fn store_block4(t: Tile4, acc: Block4) {
    store_cols4(t.m0, t.n0, acc.r0);
    store_cols4(t.m0 + 1u, t.n0, acc.r1);
    store_cols4(t.m0 + 2u, t.n0, acc.r2);
    store_cols4(t.m0 + 3u, t.n0, acc.r3);
}

// C(m, n0 .. n0+3), where in range.
fn store_cols4(m: u32, n0: u32, v: vec4<f32>) {
    if (m >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (n0 + j < p.n) { store(m, n0 + j, v[j]); }
    }
}

// f32 words of B, values col4 .. col4+3 of stored row `row` of `cols`.
fn wq4_at(row: u32, col4: u32, cols: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(wq4[(row * cols + col4) / 4u]);
}

@compute @workgroup_size(16, 16)
fn matmul_reg4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = tile4(wid, lid);
    var acc = Block4(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
    if (A_T == 1u) {
        for (var k = 0u; k < p.k; k++) {
            acc = reg4_k1(acc, t.rq, k, wq4_at(k, t.cq, p.n));
        }
    } else if (B_T == 1u) {
        for (var k = 0u; k < p.k; k += 4u) {
            acc = reg4_k4t(acc, t.rows, k, wq4_at(t.cols.x, k, p.k), wq4_at(t.cols.y, k, p.k),
                wq4_at(t.cols.z, k, p.k), wq4_at(t.cols.w, k, p.k));
        }
    } else {
        for (var k = 0u; k < p.k; k += 4u) {
            acc = reg4_k4(acc, t.rows, k, wq4_at(k, t.cq, p.n), wq4_at(k + 1u, t.cq, p.n),
                wq4_at(k + 2u, t.cq, p.n), wq4_at(k + 3u, t.cq, p.n));
        }
    }
    store_block4(t, acc);
}

// A compact B (never transposed A: a compact weight is only ever a Linear's W). In x . W^T
// a Q4_1 weight (the default GGUF's) is walked a block of 32 k at a time: each of the
// thread's four rows of W has its scale and min decoded once per block and its 4 quant
// words loaded once, instead of once per four values through wq_get4 (the same values:
// q * d + m, as wq_get4 computes them).
@compute @workgroup_size(16, 16)
fn matmul_reg4q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = tile4(wid, lid);
    var acc = Block4(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
    if (B_T == 1u && WFMT == FMT_Q4_1) {
        let rw = wq_row_words(p.k);
        for (var k = 0u; k < p.k; k += 32u) {
            let blk = t.cols * rw + vec4(5u * (k / 32u));
            let h = vec4(wq[blk.x], wq[blk.y], wq[blk.z], wq[blk.w]);
            let d = vec4(wq_f16(h.x & 0xFFFFu), wq_f16(h.y & 0xFFFFu), wq_f16(h.z & 0xFFFFu), wq_f16(h.w & 0xFFFFu));
            let mn = vec4(wq_f16(h.x >> 16u), wq_f16(h.y >> 16u), wq_f16(h.z >> 16u), wq_f16(h.w >> 16u));
            // Values 4i .. 4i+3 of the block sit in word 1 + i % 4, nibble i / 4.
            for (var i = 0u; i < 8u; i++) {
                let o = 1u + i % 4u;
                let s = vec4(4u * (i / 4u));
                let q0 = (wq_bytes4(wq[blk.x + o]) >> s) & vec4(0xFu);
                let q1 = (wq_bytes4(wq[blk.y + o]) >> s) & vec4(0xFu);
                let q2 = (wq_bytes4(wq[blk.z + o]) >> s) & vec4(0xFu);
                let q3 = (wq_bytes4(wq[blk.w + o]) >> s) & vec4(0xFu);
                acc = reg4_k4t(acc, t.rows, k + 4u * i, vec4<f32>(q0) * d.x + mn.x, vec4<f32>(q1) * d.y + mn.y,
                    vec4<f32>(q2) * d.z + mn.z, vec4<f32>(q3) * d.w + mn.w);
            }
        }
    } else if (B_T == 1u) {
        for (var k = 0u; k < p.k; k += 4u) {
            acc = reg4_k4t(acc, t.rows, k, wq_get4(t.cols.x, k, p.k), wq_get4(t.cols.y, k, p.k),
                wq_get4(t.cols.z, k, p.k), wq_get4(t.cols.w, k, p.k));
        }
    } else {
        for (var k = 0u; k < p.k; k += 4u) {
            acc = reg4_k4(acc, t.rows, k, wq_get4(k, t.cq, p.n), wq_get4(k + 1u, t.cq, p.n),
                wq_get4(k + 2u, t.cq, p.n), wq_get4(k + 3u, t.cq, p.n));
        }
    }
    store_block4(t, acc);
}
