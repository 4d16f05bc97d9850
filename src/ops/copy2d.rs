//! Strided 2-D copy (shaders/copy2d.wgsl): GPT-2's q|k|v split and, swapped, its merge.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(COPY2D, "copy2d");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    src_rs: u32,
    src_off: u32,
    dst_rs: u32,
    dst_off: u32,
    _pad: [u32; 2],
}

/// dst(rows, cols) at row stride `dst_rs`, column offset `dst_off`  <-  src likewise.
pub fn copy2d(
    enc: &mut Encoder,
    src: &Tensor,
    src_rs: usize,
    src_off: usize,
    dst: &Tensor,
    dst_rs: usize,
    dst_off: usize,
    rows: usize,
    cols: usize,
) {
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        src_rs: src_rs as u32,
        src_off: src_off as u32,
        dst_rs: dst_rs as u32,
        dst_off: dst_off as u32,
        _pad: [0; 2],
    };
    let cost = Cost { flops: 0, bytes: 8 * (rows * cols) as u64 };
    enc.dispatch(&COPY2D, "copy2d", &p, &[Arg::R(src), Arg::W(dst)], grid_1d(rows * cols, WG), cost);
}
