// Expand a compact (rows, cols) tensor, or a gathered set of its rows, to f32 through the
// dequantizers of quant.wgsl (one pipeline per format, WFMT). Useful in itself (merging
// LoRA into a compact base, export) and the harness that tests wq_get / wq_get4 against
// the host dequantizer bit for bit.
//
// dequant_rows: one thread per output element, wq_get.
// dequant_rows4: one thread per 4 consecutive elements of a row, wq_get4 (cols % 4 == 0).

struct Params {
    rows: u32,   // output rows
    cols: u32,
    flags: u32,  // HAS_IDS: output row i is source row ids[i], else row i
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;        // (rows) when HAS_IDS
@group(0) @binding(2) var<storage, read> wq: array<u32>;         // compact (R, cols)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (rows, cols)

fn src_row(r: u32) -> u32 {
    return select(r, ids[r], (p.flags & HAS_IDS) != 0u);
}

@compute @workgroup_size(WG)
fn dequant_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i >= p.rows * p.cols) { return; }
    let r = i / p.cols;
    let c = i - r * p.cols;
    out[i] = wq_get(src_row(r), c, p.cols);
}

@compute @workgroup_size(WG)
fn dequant_rows4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    let c4 = p.cols / 4u;
    if (i >= p.rows * c4) { return; }
    let r = i / c4;
    let c = 4u * (i - r * c4);
    let v = wq_get4(src_row(r), c, p.cols);
    let o = r * p.cols + c;
    out[o] = v.x;
    out[o + 1u] = v.y;
    out[o + 2u] = v.z;
    out[o + 3u] = v.w;
}
