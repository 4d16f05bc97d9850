//! Strided 2-D copy, in f64: dst[r * dst_rs + dst_off + j] = src[r * src_rs + src_off + j]
//! for r < rows, j < cols; every other element of dst is left as it was.

/// Where a (rows, cols) block sits in a row-major buffer of row stride `rs`, from column `off`.
#[derive(Clone, Copy, Debug)]
pub struct Strided {
    pub rs: usize,
    pub off: usize,
}

pub fn copy2d(src: &[f64], s: Strided, dst: &[f64], d: Strided, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = dst.to_vec();
    for r in 0..rows {
        for j in 0..cols {
            out[r * d.rs + d.off + j] = src[r * s.rs + s.off + j];
        }
    }
    out
}
