// LayerNorm (GPT-2) over rows of x(rows, C):
//   y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps), var biased (divides by C).
// Backward, with xhat = (x - mean) * rstd and g = dy * w:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dw = sum over rows of dy * xhat,  db = sum over rows of dy
// The variance is a second pass over the row (sum of (x - mean)^2), not E[x^2] - mean^2,
// which cancels catastrophically when |mean| >> std. Row reductions (wg_sum, wg_sum2 in
// common.wgsl): one WG-thread workgroup per row. dw/db across rows in two stages, with no
// atomics (deterministic): one thread per (column, chunk of p.chunk rows) writes the
// chunk's partial sums (PARTIAL: dw and db are then the two halves of a scratch), and
// bias.wgsl's colsum_finish adds the chunks in order; with one chunk it adds into dw/db.

struct Params {
    rows: u32,
    c: u32,
    flags: u32,  // ACCUMULATE (dx) | HAS_DW | HAS_DB | PARTIAL
    eps: f32,
    chunk: u32,  // rows per partial sum of dw/db
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> x: array<f32>;               // (rows, C)
@group(0) @binding(2) var<storage, read> w: array<f32>;               // (C)
@group(0) @binding(3) var<storage, read> b: array<f32>;               // (C)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;         // (rows, C)
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;  // (rows)
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;  // (rows)

@compute @workgroup_size(WG)
fn layernorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = flat_id(wid, nwg, 1u);
    if (row >= p.rows) { return; }
    let base = row * p.c;
    let inv_c = 1.0 / f32(p.c);
    var s = 0.0;
    for (var i = lid.x; i < p.c; i += WG) {
        s += x[base + i];
    }
    let m = wg_sum(s, lid.x) * inv_c;
    var ss = 0.0;
    for (var i = lid.x; i < p.c; i += WG) {
        let d = x[base + i] - m;
        ss = fma(d, d, ss);
    }
    let r = inverseSqrt(wg_sum(ss, lid.x) * inv_c + p.eps);
    for (var i = lid.x; i < p.c; i += WG) {
        y[base + i] = fma((x[base + i] - m) * r, w[i], b[i]);
    }
    if (lid.x == 0u) {
        mean_out[row] = m;
        rstd_out[row] = r;
    }
}

@group(0) @binding(1) var<storage, read> bx: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> bw: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read> mean: array<f32>;        // (rows)
@group(0) @binding(4) var<storage, read> rstd: array<f32>;        // (rows)
@group(0) @binding(5) var<storage, read> dy: array<f32>;          // (rows, C)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;    // (rows, C)

@compute @workgroup_size(WG)
fn layernorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = flat_id(wid, nwg, 1u);
    if (row >= p.rows) { return; }
    let base = row * p.c;
    let m = mean[row];
    let r = rstd[row];
    var acc = vec2(0.0, 0.0);  // (sum g, sum g * xhat)
    for (var i = lid.x; i < p.c; i += WG) {
        let g = dy[base + i] * bw[i];
        acc += vec2(g, g * (bx[base + i] - m) * r);
    }
    let sums = wg_sum2(acc, lid.x) / f32(p.c);
    for (var i = lid.x; i < p.c; i += WG) {
        let xhat = (bx[base + i] - m) * r;
        var v = r * (dy[base + i] * bw[i] - sums.x - xhat * sums.y);
        if ((p.flags & ACCUMULATE) != 0u) { v += dx[base + i]; }
        dx[base + i] = v;
    }
}

@group(0) @binding(1) var<storage, read> wx: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> wmean: array<f32>;       // (rows)
@group(0) @binding(3) var<storage, read> wrstd: array<f32>;       // (rows)
@group(0) @binding(4) var<storage, read> wdy: array<f32>;         // (rows, C)
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;    // (C) accumulated, or (chunks, C)
@group(0) @binding(6) var<storage, read_write> db: array<f32>;    // (C) accumulated, or (chunks, C)

@compute @workgroup_size(WG)
fn layernorm_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    let r0 = gid.y * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var sw = 0.0;
    var sb = 0.0;
    for (var row = r0; row < r1; row++) {
        let o = row * p.c + ch;
        let g = wdy[o];
        sw = fma(g, (wx[o] - wmean[row]) * wrstd[row], sw);
        sb += g;
    }
    if ((p.flags & PARTIAL) != 0u) {
        dw[gid.y * p.c + ch] = sw;
        db[gid.y * p.c + ch] = sb;
        return;
    }
    if ((p.flags & HAS_DW) != 0u) { dw[ch] += sw; }
    if ((p.flags & HAS_DB) != 0u) { db[ch] += sb; }
}
