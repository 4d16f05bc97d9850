use webtune::gpu::Encoder;
use webtune::ops::copy2d::copy2d;

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::copy2d::{copy2d as reference, Strided};

/// A copy, with no arithmetic: every element must be bit-exact.
const COPY2D: Tol = Tol { name: "COPY2D", abs: 0.0, rel: 0.0 };

/// Copy a (rows, cols) block from `src` (row stride `s.rs`, column offset `s.off`) into a
/// random `dst` (likewise): the block must land exactly, and nothing else may change.
fn run(rng: &mut Rng, rows: usize, cols: usize, s: Strided, d: Strided) {
    assert!(s.off + cols <= s.rs && d.off + cols <= d.rs);
    let g = gpu();
    let what = format!("copy2d {rows}x{cols} src rs {} off {} -> dst rs {} off {}", s.rs, s.off, d.rs, d.off);
    let (src, dst) = (rng.vec(rows * s.rs, 1.0), rng.vec(rows * d.rs, 1.0));
    let (ts, td) = (g.upload_f32("src", &src).unwrap(), g.upload_f32("dst", &dst).unwrap());
    let mut enc = Encoder::new(g);
    copy2d(&mut enc, &ts, s.rs, s.off, &td, d.rs, d.off, rows, cols);
    enc.submit();
    let want = reference(&f64s(&src), s, &f64s(&dst), d, rows, cols);
    check(&what, &block(g.read_f32(&td)).unwrap(), &want, COPY2D);
}

#[test]
fn copy2d_matches_reference() {
    let mut rng = Rng::new(81);
    let st = |rs, off| Strided { rs, off };
    for &(rows, cols) in &[(1, 1), (3, 7), (5, 255), (17, 257), (129, 33), (300, 100)] {
        // Contiguous to contiguous.
        run(&mut rng, rows, cols, st(cols, 0), st(cols, 0));
        // GPT-2's q|k|v split: each third of a (rows, 3C) buffer into a (rows, C) one ...
        for i in 0..3 {
            run(&mut rng, rows, cols, st(3 * cols, i * cols), st(cols, 0));
        }
        // ... and its backward's merge, back into one third of a (rows, 3C) buffer.
        for i in 0..3 {
            run(&mut rng, rows, cols, st(cols, 0), st(3 * cols, i * cols));
        }
        // Ragged strides and offsets on both sides.
        run(&mut rng, rows, cols, st(cols + 5, 3), st(cols + 2, 1));
    }
}

// More than 65535 * 256 elements: the grid folds into y, and the row and column of an
// element come from the unfolded index.
#[test]
fn copy2d_folds_the_grid() {
    let mut rng = Rng::new(82);
    let (rows, cols) = (65535 + 3, 257);
    run(&mut rng, rows, cols, Strided { rs: cols + 1, off: 1 }, Strided { rs: cols, off: 0 });
}
