// Strided 2-D copy: dst[r * dst_rs + dst_off + j] = src[r * src_rs + src_off + j] for
// r < rows, j < cols. It splits GPT-2's fused (rows, 3C) q|k|v projection into three
// contiguous (rows, C) tensors, and its backward is the same copy with the roles swapped
// (merging dq, dk, dv back into one (rows, 3C) gradient), so one entry point serves both.
// FLOPs 0; bytes 8 * rows * cols.

struct Params {
    rows: u32,
    cols: u32,
    src_rs: u32,
    src_off: u32,
    dst_rs: u32,
    dst_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn copy2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, 256u);
    if (i >= p.rows * p.cols) { return; }
    let r = i / p.cols;
    let j = i % p.cols;
    dst[r * p.dst_rs + p.dst_off + j] = src[r * p.src_rs + p.src_off + j];
}
