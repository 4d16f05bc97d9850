// RMSNorm (Llama, Qwen2), in f32 as Hugging Face computes it:
//   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)   per row of x(rows, C).
// Backward, with g = dy * w:
//   dx = rstd * (g - x * rstd^2 * mean(g * x))
//   dw = sum over rows of dy * x * rstd
// The row reductions (wg_sum, common.wgsl) take one WG-thread workgroup per row (rows
// folded into y past 65535 workgroups). dw is reduced across rows in two stages with no
// atomics, deterministic: here one thread per (column, chunk of p.chunk rows) writes the
// chunk's partial sum (the loads of a row coalesce across the workgroup), and bias.wgsl's
// colsum_finish adds the chunks in order; with a single chunk it adds into dw itself.

// Gemma's RMSNorm scales by (1 + w) instead of w (weights stored as offsets from 1, as
// transformers' Gemma3RMSNorm keeps them): with the PLUS_ONE flag (from src/ops/rmsnorm.rs)
// every read of w becomes 1 + w, in f32 as transformers computes `1.0 + weight.float()`.
// dw is unchanged: d/dw of x r (1 + w) is d/dw of x r w.

struct Params {
    rows: u32,
    c: u32,
    flags: u32,  // ACCUMULATE (y in the forward; dx; dw's first stage when it has one chunk), PLUS_ONE
    eps: f32,
    chunk: u32,  // rows per partial sum of dw
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

fn weight_of(v: f32) -> f32 {
    return select(v, 1.0 + v, (p.flags & PLUS_ONE) != 0u);
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> x: array<f32>;             // (rows, C)
@group(0) @binding(2) var<storage, read> w: array<f32>;             // (C)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;       // (rows, C)
@group(0) @binding(4) var<storage, read_write> rstd_out: array<f32>; // (rows)

@compute @workgroup_size(WG)
fn rmsnorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = flat_id(wid, nwg, 1u);
    if (row >= p.rows) { return; }
    let base = row * p.c;
    var ss = 0.0;
    for (var i = lid.x; i < p.c; i += WG) {
        let v = x[base + i];
        ss = fma(v, v, ss);
    }
    let r = inverseSqrt(wg_sum(ss, lid.x) / f32(p.c) + p.eps);
    for (var i = lid.x; i < p.c; i += WG) {
        var v = x[base + i] * r * weight_of(w[i]);
        // Gemma's post-norms add their output to the residual stream already in y.
        if ((p.flags & ACCUMULATE) != 0u) { v += y[base + i]; }
        y[base + i] = v;
    }
    if (lid.x == 0u) { rstd_out[row] = r; }
}

@group(0) @binding(1) var<storage, read> bx: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> bw: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;        // (rows)
@group(0) @binding(4) var<storage, read> dy: array<f32>;          // (rows, C)
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;    // (rows, C)

@compute @workgroup_size(WG)
fn rmsnorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = flat_id(wid, nwg, 1u);
    if (row >= p.rows) { return; }
    let base = row * p.c;
    let r = rstd[row];
    var gx = 0.0;
    for (var i = lid.x; i < p.c; i += WG) {
        gx = fma(dy[base + i] * weight_of(bw[i]), bx[base + i], gx);
    }
    let k = r * r * wg_sum(gx, lid.x) / f32(p.c);
    for (var i = lid.x; i < p.c; i += WG) {
        var v = r * (dy[base + i] * weight_of(bw[i]) - bx[base + i] * k);
        if ((p.flags & ACCUMULATE) != 0u) { v += dx[base + i]; }
        dx[base + i] = v;
    }
}

@group(0) @binding(1) var<storage, read> wx: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> wrstd: array<f32>;       // (rows)
@group(0) @binding(3) var<storage, read> wdy: array<f32>;         // (rows, C)
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;    // (chunks, C) partials, or (C)

@compute @workgroup_size(WG)
fn rmsnorm_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    let r0 = gid.y * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var s = 0.0;
    for (var row = r0; row < r1; row++) {
        let o = row * p.c + ch;
        s = fma(wdy[o] * wx[o], wrstd[row], s);
    }
    let o = gid.y * p.c + ch;
    if ((p.flags & ACCUMULATE) != 0u) { s += dw[o]; }
    dw[o] = s;
}
