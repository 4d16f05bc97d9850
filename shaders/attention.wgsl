// Causal self-attention with grouped-query heads and segment masking, flash style: the
// (T, T) probabilities are never stored. The forward keeps a running max and sum per query
// and saves the log-sum-exp; the backward recomputes each probability from it.
//
// Query (b, tq) of head h sees key (b, tk) of kv head h / (H/Hk) iff tk <= tq,
// tq - tk < window (sliding-window layers; u32::MAX otherwise) and
// seg[b*T + tk] == seg[b*T + tq]. A query always sees itself, so no softmax is empty.
//
// One thread owns one query (forward, dQ) or one key (dK/dV) for a whole pass, with its
// head row and accumulators in registers; the other side streams through workgroup memory
// in tiles of TILE rows, so a workgroup reads each K/V (or Q/dOut) row once for BLOCK rows.
// Head rows are vec4s: D must be a multiple of 4, at most 256. BLOCK (threads per
// workgroup), DV = D / 4 and TILE are constants of each pipeline (one per head size and
// variant, src/ops/attention.rs, whose table keeps the workgroup arrays within 16 KiB), so
// the per-thread head rows and accumulators are fixed-size arrays walked by constant loops,
// which GPUs keep in registers (a runtime length puts them in local memory).
// FLOPs per visible (query, key) pair: forward 4D, dQ 6D, dK/dV 8D.

struct Params {
    b: u32,
    t: u32,
    h: u32,
    hk: u32,
    dv: u32,    // D / 4, the pipeline's DV (kept in the struct the launcher shares)
    group: u32, // H / Hk query heads per kv head
    tile: u32,  // the pipeline's TILE
    scale: f32, // 1 / sqrt(D), or the model's own (Gemma 3's query_pre_attn_scalar^-0.5)
    window: u32, // keys a query sees at most, itself included; u32::MAX: no window
    qchunk: u32, // dK/dV split: queries per partial (a multiple of BLOCK)
    nchunk: u32, // dK/dV split: query chunks per head of a group (1: no split)
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// From src/ops/attention.rs: BLOCK threads per workgroup = queries (or keys) it owns; DV
// vec4s per head row; TILE rows per tile, TILE_VEC = TILE * DV vec4s (the table there keeps
// sh_a + sh_b + sh_seg + sh_st within WebGPU's default 16 KiB).
const NEG: f32 = -3.0e38;   // a masked score; finite so that NEG - NEG is not NaN

var<workgroup> sh_a: array<vec4<f32>, TILE_VEC>; // (TILE, D) K (forward, dQ) or Q (dK/dV) rows
var<workgroup> sh_b: array<vec4<f32>, TILE_VEC>; // (TILE, D) V (forward, dQ) or dOut (dK/dV) rows
var<workgroup> sh_seg: array<u32, TILE>;         // segment of each tile row
var<workgroup> sh_st: array<vec2<f32>, TILE>;    // (lse, delta) of each query row (dK/dV)

fn dot4(a: vec4<f32>, b: vec4<f32>, acc: vec4<f32>) -> vec4<f32> {
    return fma(a, b, acc);
}

fn hsum(a: vec4<f32>) -> f32 {
    return (a.x + a.y) + (a.z + a.w);
}

// ---- forward ----------------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;        // (rows, H*D)
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;        // (rows, Hk*D)
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;        // (rows, Hk*D)
@group(0) @binding(4) var<storage, read> seg: array<u32>;            // (rows)
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;  // (rows, H*D)
// (B*H*T) (lse, delta): the forward writes the lse and zero, the dQ pass fills in delta.
@group(0) @binding(6) var<storage, read_write> lse: array<vec2<f32>>;

// Stage keys [k0, k0 + n) of kv head `kvh` in sequence `b`: K into sh_a, V into sh_b.
fn load_kv(b: u32, kvh: u32, k0: u32, n: u32, lid: u32) {
    for (var e = lid; e < n * DV; e += BLOCK) {
        let j = e / DV;
        let src = ((b * p.t + k0 + j) * p.hk + kvh) * DV + e % DV;
        sh_a[e] = k[src];
        sh_b[e] = v[src];
    }
    if (lid < n) {
        sh_seg[lid] = seg[b * p.t + k0 + lid];
    }
}

// The first key that query q0, the block's first, sees through the window: the keys
// before it are masked for the whole block, so their tiles are skipped (no bits change).
fn first_key(q0: u32) -> u32 {
    return select(0u, q0 + 1u - p.window, q0 + 1u > p.window);
}

// Grid: (ceil(T / BLOCK), B*H). Thread = query.
@compute @workgroup_size(BLOCK)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let bh = wid.y;
    let b = bh / p.h;
    let h = bh % p.h;
    let kvh = h / p.group;
    let q0 = wid.x * BLOCK;
    let tq = min(q0 + lid, p.t - 1u); // threads past T compute a duplicate and discard it
    let row = b * p.t + tq;
    let base = (row * p.h + h) * DV;
    let sq = seg[row];
    var qr: array<vec4<f32>, DV>;
    var acc: array<vec4<f32>, DV>;
    for (var i = 0u; i < DV; i++) {
        qr[i] = q[base + i] * p.scale;
        acc[i] = vec4<f32>(0.0);
    }
    var m = NEG;
    var l = 0.0;
    var s: array<f32, TILE>; // the scores of one key tile
    let kend = min(q0 + BLOCK, p.t); // the block's last query sees keys < kend
    for (var k0 = first_key(q0); k0 < kend; k0 += TILE) {
        let n = min(TILE, kend - k0);
        load_kv(b, kvh, k0, n, lid);
        workgroupBarrier();
        // Scores of the whole tile first, so the running sum is rescaled once per tile.
        var mt = NEG;
        for (var j = 0u; j < n; j++) {
            var x = NEG;
            if (k0 + j <= tq && tq - (k0 + j) < p.window && sh_seg[j] == sq) {
                var d4 = vec4<f32>(0.0);
                for (var i = 0u; i < DV; i++) {
                    d4 = dot4(qr[i], sh_a[j * DV + i], d4);
                }
                x = hsum(d4);
            }
            s[j] = x;
            mt = max(mt, x);
        }
        if (mt > NEG) {
            let mn = max(m, mt);
            let alpha = exp(m - mn);
            l *= alpha;
            for (var i = 0u; i < DV; i++) {
                acc[i] *= alpha;
            }
            m = mn;
            for (var j = 0u; j < n; j++) {
                if (s[j] > NEG) {
                    let pj = exp(s[j] - m);
                    l += pj;
                    for (var i = 0u; i < DV; i++) {
                        acc[i] = fma(vec4<f32>(pj), sh_b[j * DV + i], acc[i]);
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (q0 + lid < p.t) {
        let inv = 1.0 / l;
        for (var i = 0u; i < DV; i++) {
            o[base + i] = acc[i] * inv;
        }
        lse[bh * p.t + tq] = vec2<f32>(m + log(l), 0.0);
    }
}

// ---- backward: dQ -------------------------------------------------------------------------
// dQ[tq] = scale * sum_tk P * (dOut[tq].V[tk] - delta[tq]) * K[tk], with delta[tq] =
// rowsum(dOut[tq] * O[tq]) the softmax backward's correction term. The dQ pass runs first:
// each query thread computes its delta and writes it beside the lse, where the dK/dV pass
// reads both (8 storage bindings, WebGPU's default per-stage limit, and no pass of its own).

@group(0) @binding(5) var<storage, read_write> stats_rw: array<vec2<f32>>; // (B*H*T) (lse, delta)
@group(0) @binding(6) var<storage, read> dout: array<vec4<f32>>;       // (rows, H*D)
@group(0) @binding(7) var<storage, read> o_in: array<vec4<f32>>;       // (rows, H*D)
@group(0) @binding(8) var<storage, read_write> dq: array<vec4<f32>>;   // (rows, H*D)

// Grid: (ceil(T / BLOCK), B*H). Thread = query.
@compute @workgroup_size(BLOCK)
fn attention_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let bh = wid.y;
    let b = bh / p.h;
    let h = bh % p.h;
    let kvh = h / p.group;
    let q0 = wid.x * BLOCK;
    let tq = min(q0 + lid, p.t - 1u);
    let row = b * p.t + tq;
    let base = (row * p.h + h) * DV;
    let sq = seg[row];
    let lq = stats_rw[bh * p.t + tq].x;
    var qr: array<vec4<f32>, DV>;
    var gr: array<vec4<f32>, DV>;
    var acc: array<vec4<f32>, DV>;
    var d4 = vec4<f32>(0.0);
    for (var i = 0u; i < DV; i++) {
        qr[i] = q[base + i] * p.scale;
        gr[i] = dout[base + i];
        acc[i] = vec4<f32>(0.0);
        d4 = fma(gr[i], o_in[base + i], d4);
    }
    let dl = hsum(d4);
    let kend = min(q0 + BLOCK, p.t);
    for (var k0 = first_key(q0); k0 < kend; k0 += TILE) {
        let n = min(TILE, kend - k0);
        load_kv(b, kvh, k0, n, lid);
        workgroupBarrier();
        for (var j = 0u; j < n; j++) {
            if (k0 + j <= tq && tq - (k0 + j) < p.window && sh_seg[j] == sq) {
                var s4 = vec4<f32>(0.0);
                var p4 = vec4<f32>(0.0);
                for (var i = 0u; i < DV; i++) {
                    s4 = dot4(qr[i], sh_a[j * DV + i], s4);
                    p4 = dot4(gr[i], sh_b[j * DV + i], p4);
                }
                let ds = exp(hsum(s4) - lq) * (hsum(p4) - dl);
                for (var i = 0u; i < DV; i++) {
                    acc[i] = fma(vec4<f32>(ds), sh_a[j * DV + i], acc[i]);
                }
            }
        }
        workgroupBarrier();
    }
    if (q0 + lid < p.t) {
        for (var i = 0u; i < DV; i++) {
            dq[base + i] = acc[i] * p.scale;
        }
        stats_rw[bh * p.t + tq] = vec2<f32>(lq, dl);
    }
}

// ---- backward: dK, dV ---------------------------------------------------------------------
// Per key of kv head g, over the queries that see it, in every query head of g's group:
// dV[tk] = sum P * dOut[tq];  dK[tk] = scale * sum P * (dOut[tq].V[tk] - delta[tq]) * Q[tq]
// Each key is owned by one thread per workgroup, so the sums need no atomics. Unsplit
// (CPU adapters), one workgroup walks every query head of the group and every query that
// sees its keys, and writes dK/dV. Split (GPUs, which need more workgroups than
// ceil(T / BLOCK) * B*Hk), a third grid dimension z = g * nchunk + c gives workgroup z the
// queries [k0 + c*qchunk, +qchunk) of head g of the group alone; it writes its partial sums
// to scratch, and attention_dkv_reduce adds the partials of each key in the fixed order
// z = 0, 1, ...: deterministic, and the same bits for the same shape on every run.

@group(0) @binding(5) var<storage, read> stats: array<vec2<f32>>;      // (B*H*T) (lse, delta), from the dQ pass
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f32>>;   // (rows, Hk*D)
@group(0) @binding(8) var<storage, read_write> dvv: array<vec4<f32>>;  // (rows, Hk*D)
// (2, S, rows, Hk*D): dK's partials, then dV's; S = group * nchunk.
@group(0) @binding(7) var<storage, read_write> part_w: array<vec4<f32>>;

// The key thread's own rows and sums, shared by the two stage-one entry points.
var<private> kr: array<vec4<f32>, DV>; // K[tk] * scale
var<private> vr: array<vec4<f32>, DV>; // V[tk]
var<private> gk: array<vec4<f32>, DV>; // sum dS * Q (unscaled)
var<private> gv: array<vec4<f32>, DV>; // sum P * dOut

// One past the last query that sees any key of the block starting at k0.
fn query_limit(k0: u32) -> u32 {
    if (p.window >= p.t) { return p.t; }
    return min(p.t, k0 + BLOCK - 1u + p.window);
}

// Accumulate into gk, gv the pairs of key tk (clamped; row `row`, segment sk) with the
// queries [qa, qb) of the heads g0..g1 of kv head kvh's group. Uniform over the workgroup.
fn dkv_accumulate(b: u32, kvh: u32, tk: u32, g0: u32, g1: u32, qa: u32, qb: u32, lid: u32) {
    let sk = seg[b * p.t + tk];
    for (var g = g0; g < g1; g++) {
        let h = kvh * p.group + g;
        let bh = b * p.h + h;
        for (var q0 = qa; q0 < qb; q0 += TILE) {
            let n = min(TILE, qb - q0);
            for (var e = lid; e < n * DV; e += BLOCK) {
                let src = ((b * p.t + q0 + e / DV) * p.h + h) * DV + e % DV;
                sh_a[e] = q[src];
                sh_b[e] = dout[src];
            }
            if (lid < n) {
                sh_seg[lid] = seg[b * p.t + q0 + lid];
                sh_st[lid] = stats[bh * p.t + q0 + lid];
            }
            workgroupBarrier();
            for (var j = 0u; j < n; j++) {
                if (q0 + j >= tk && (q0 + j) - tk < p.window && sh_seg[j] == sk) {
                    var s4 = vec4<f32>(0.0);
                    var p4 = vec4<f32>(0.0);
                    for (var i = 0u; i < DV; i++) {
                        s4 = dot4(kr[i], sh_a[j * DV + i], s4);
                        p4 = dot4(vr[i], sh_b[j * DV + i], p4);
                    }
                    let st = sh_st[j];
                    let pj = exp(hsum(s4) - st.x);
                    let ds = pj * (hsum(p4) - st.y);
                    for (var i = 0u; i < DV; i++) {
                        gv[i] = fma(vec4<f32>(pj), sh_b[j * DV + i], gv[i]);
                        gk[i] = fma(vec4<f32>(ds), sh_a[j * DV + i], gk[i]);
                    }
                }
            }
            workgroupBarrier();
        }
    }
}

// Load key tk's rows (clamped: threads past T compute a duplicate and discard it) and
// zero its sums; the row's first vec4 in (rows, Hk*D).
fn dkv_begin(b: u32, kvh: u32, tk: u32) -> u32 {
    let base = ((b * p.t + tk) * p.hk + kvh) * DV;
    for (var i = 0u; i < DV; i++) {
        kr[i] = k[base + i] * p.scale;
        vr[i] = v[base + i];
        gk[i] = vec4<f32>(0.0);
        gv[i] = vec4<f32>(0.0);
    }
    return base;
}

// Unsplit. Grid: (ceil(T / BLOCK), B*Hk). Thread = key.
@compute @workgroup_size(BLOCK)
fn attention_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let b = wid.y / p.hk;
    let kvh = wid.y % p.hk;
    let k0 = wid.x * BLOCK;
    let tk = min(k0 + lid, p.t - 1u);
    let base = dkv_begin(b, kvh, tk);
    // Queries before the block's first key see none of its keys, nor those past the window.
    dkv_accumulate(b, kvh, tk, 0u, p.group, k0, query_limit(k0), lid);
    if (k0 + lid < p.t) {
        for (var i = 0u; i < DV; i++) {
            dk[base + i] = gk[i] * p.scale;
            dvv[base + i] = gv[i];
        }
    }
}

// Split, stage one. Grid: (ceil(T / BLOCK), B*Hk, group * nchunk). Thread = key.
@compute @workgroup_size(BLOCK)
fn attention_backward_dkv_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let b = wid.y / p.hk;
    let kvh = wid.y % p.hk;
    let k0 = wid.x * BLOCK;
    let g = wid.z / p.nchunk;
    let qa = k0 + (wid.z % p.nchunk) * p.qchunk;
    let lim = query_limit(k0);
    if (qa >= lim) { return; } // an empty chunk: the reduction does not read its partial
    let tk = min(k0 + lid, p.t - 1u);
    let base = dkv_begin(b, kvh, tk);
    dkv_accumulate(b, kvh, tk, g, g + 1u, qa, min(lim, qa + p.qchunk), lid);
    if (k0 + lid < p.t) {
        let plane = p.b * p.t * p.hk * DV; // vec4s of one partial
        let dst = wid.z * plane + base;
        let sv = p.group * p.nchunk * plane; // dV's partials after dK's
        for (var i = 0u; i < DV; i++) {
            part_w[dst + i] = gk[i];
            part_w[sv + dst + i] = gv[i];
        }
    }
}

// Split, stage two: dK = scale * sum_z partial_z, dV = sum_z partial_z over the chunks z
// that hold queries seeing the key's block, in the order of z.
@group(0) @binding(1) var<storage, read> part_r: array<vec4<f32>>;       // (2, S, rows, Hk*D)
@group(0) @binding(2) var<storage, read_write> dk_red: array<vec4<f32>>; // (rows, Hk*D)
@group(0) @binding(3) var<storage, read_write> dv_red: array<vec4<f32>>; // (rows, Hk*D)

// Grid: grid_1d(rows * Hk*D/4, WG). Thread = one vec4 of one key row's dK and dV.
@compute @workgroup_size(WG)
fn attention_dkv_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = flat_id(gid, nwg, WG);
    let plane = p.b * p.t * p.hk * DV;
    if (n >= plane) { return; }
    let tk = (n / (p.hk * DV)) % p.t;
    let k0 = tk / BLOCK * BLOCK;
    let nc = min(p.nchunk, (query_limit(k0) - k0 + p.qchunk - 1u) / p.qchunk);
    let sv = p.group * p.nchunk * plane;
    var sk = vec4<f32>(0.0);
    var sv4 = vec4<f32>(0.0);
    for (var g = 0u; g < p.group; g++) {
        for (var c = 0u; c < nc; c++) {
            let z = (g * p.nchunk + c) * plane + n;
            sk += part_r[z];
            sv4 += part_r[sv + z];
        }
    }
    dk_red[n] = sk * p.scale;
    dv_red[n] = sv4;
}

// ---- decoding with a KV cache -----------------------------------------------------------
// Generation keeps, per layer, K and V caches of shape (B, S, Hk*D): sequence b's key at
// position t lives at row b*S + t. A forward over new tokens (the prompt in chunks, then one
// token at a time) writes the new rows' K/V into the cache at their positions, then each
// new query attends to the cached keys 0..=pos (its own position): causal by construction.
// The positions come from a storage buffer, so the uniform parameters do not change from
// one decoded token to the next. New rows are laid out (B, T): row r is token r % T of
// sequence r / T. No segments: one cache row per sequence.

struct CacheParams {
    b: u32,
    t: u32,     // new tokens per sequence in this forward
    h: u32,
    hk: u32,
    dv: u32,    // D / 4, the pipeline's DV
    group: u32, // H / Hk
    cap: u32,   // S: cache positions per sequence
    scale: f32, // as Params::scale
    window: u32, // as Params::window
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> pc: CacheParams;

// kv_append: bindings 1 k (rows, Hk*D) and 2 v, 3 pos (rows), 4 k cache, 5 v cache.
@group(0) @binding(1) var<storage, read> k_new: array<vec4<f32>>;          // (rows, Hk*D)
@group(0) @binding(2) var<storage, read> v_new: array<vec4<f32>>;          // (rows, Hk*D)
@group(0) @binding(3) var<storage, read> pos_c: array<u32>;                 // (rows)
@group(0) @binding(4) var<storage, read_write> k_cache: array<vec4<f32>>;  // (B*S, Hk*D)
@group(0) @binding(5) var<storage, read_write> v_cache: array<vec4<f32>>;  // (B*S, Hk*D)

// Grid: grid_1d(rows * Hk*D/4, WG). Thread = one vec4 of one new row's K and V.
// FLOPs 0; bytes 4 * 4 * rows * Hk*D (K and V read and written) + 4 * rows.
@compute @workgroup_size(WG)
fn attention_kv_append(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = flat_id(gid, nwg, WG);
    let kd = pc.hk * DV;
    if (n >= pc.b * pc.t * kd) { return; }
    let r = n / kd;
    let e = n % kd;
    // A position past the cache would write another row's memory; the launcher's caller
    // refuses such positions, this only keeps the write in bounds.
    let dst = ((r / pc.t) * pc.cap + min(pos_c[r], pc.cap - 1u)) * kd + e;
    k_cache[dst] = k_new[n];
    v_cache[dst] = v_new[n];
}

// decode: bindings 1 q (rows, H*D), 2 k cache, 3 v cache, 4 pos (rows), 5 o (rows, H*D).
@group(0) @binding(2) var<storage, read> kc: array<vec4<f32>>;  // (B*S, Hk*D)
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;  // (B*S, Hk*D)
@group(0) @binding(4) var<storage, read> pos_d: array<u32>;     // (rows)

var<workgroup> sh_p: array<f32, BLOCK>;        // scores, then probabilities, of a key tile
var<workgroup> sh_o: array<vec4<f32>, BLOCK>;  // partial outputs of the thread groups
var<workgroup> sh_n: u32;                      // keys 0..sh_n precede the query (itself included)

// Grid: (rows, H). Workgroup = one (new row, head). Keys go through in tiles of BLOCK:
// thread j scores key k0 + j against the query, the tile's max updates the running max,
// and for the weighted sum of V the BLOCK threads split as (BLOCK / dv) groups of dv
// threads, thread (g, i) owning vec4 i of the output over keys j = g mod (BLOCK / dv). The groups' partial
// sums are added at the end. FLOPs 4D per (query, visible key), like the forward.
@compute @workgroup_size(BLOCK)
fn attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let r = wid.x;
    let h = wid.y;
    let b = r / pc.t;
    let kvh = h / pc.group;
    let kd = pc.hk * DV;
    let qbase = (r * pc.h + h) * DV;
    let cbase = b * pc.cap * kd + kvh * DV; // key j of this sequence and kv head: cbase + j * kd
    if (lid == 0u) {
        sh_n = min(pos_d[r], pc.cap - 1u) + 1u;
    }
    let nk = workgroupUniformLoad(&sh_n);
    var qr: array<vec4<f32>, DV>;
    for (var i = 0u; i < DV; i++) {
        qr[i] = q[qbase + i] * pc.scale;
    }
    let ng = BLOCK / DV;
    let gi = lid / DV;
    let ci = lid % DV;
    var acc = vec4<f32>(0.0);
    var m = NEG;
    var l = 0.0;
    // A sliding window starts at the first key it holds; that key is always visible.
    let first = select(0u, nk - pc.window, nk > pc.window);
    for (var k0 = first; k0 < nk; k0 += BLOCK) {
        let n = min(BLOCK, nk - k0);
        var s = NEG;
        if (lid < n) {
            let kb = cbase + (k0 + lid) * kd;
            var d4 = vec4<f32>(0.0);
            for (var i = 0u; i < DV; i++) {
                d4 = dot4(qr[i], kc[kb + i], d4);
            }
            s = hsum(d4);
        }
        sh_p[lid] = s;
        workgroupBarrier();
        var mt = NEG;
        for (var j = 0u; j < n; j++) {
            mt = max(mt, sh_p[j]);
        }
        let mn = max(m, mt); // finite: the first key is always visible
        let alpha = exp(m - mn);
        workgroupBarrier();
        sh_p[lid] = exp(s - mn); // 0 past the tile's end
        workgroupBarrier();
        var lt = 0.0;
        for (var j = 0u; j < n; j++) {
            lt += sh_p[j];
        }
        l = l * alpha + lt;
        acc *= alpha;
        if (gi < ng) {
            for (var j = gi; j < n; j += ng) {
                acc = fma(vec4<f32>(sh_p[j]), vc[cbase + (k0 + j) * kd + ci], acc);
            }
        }
        m = mn;
        workgroupBarrier();
    }
    sh_o[lid] = acc;
    workgroupBarrier();
    if (lid < DV) {
        var sum = vec4<f32>(0.0);
        for (var g = 0u; g < ng; g++) {
            sum += sh_o[g * DV + lid];
        }
        o[qbase + lid] = sum / l;
    }
}
