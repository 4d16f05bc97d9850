use webtune::gpu::Encoder;
use webtune::ops::gather;

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::gather::{gather, gather_backward};

/// A copy, with no arithmetic: every element must be bit-exact.
const GATHER: Tol = Tol { name: "GATHER", abs: 0.0, rel: 0.0 };

/// `n` distinct rows of `r`, in random order (a partial Fisher-Yates shuffle).
fn distinct_rows(rng: &mut Rng, r: usize, n: usize) -> Vec<u32> {
    let mut all: Vec<u32> = (0..r as u32).collect();
    for i in 0..n {
        let j = i + rng.below(r - i);
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

#[test]
fn gather_forward_backward_match_reference() {
    let g = gpu();
    let mut rng = Rng::new(10);
    for &(r, n, c) in &[(1, 1, 1), (5, 5, 3), (37, 1, 13), (37, 20, 257), (300, 71, 64), (1000, 999, 1)] {
        let x = rng.vec(r * c, 1.0);
        let dout = rng.vec(n * c, 1.0);
        let rows = distinct_rows(&mut rng, r, n);
        let tx = g.upload_f32("x", &x).unwrap();
        let trows = g.upload_u32("rows", &rows).unwrap();
        let tdout = g.upload_f32("dout", &dout).unwrap();
        let tout = g.zeros("out", n * c).unwrap();
        // NaN garbage: any element of dx that backward fails to write shows up.
        let tdx = g.upload_f32("dx", &vec![f32::NAN; r * c]).unwrap();
        let mut enc = Encoder::new(g);
        gather::forward(&mut enc, &tx, &trows, &tout, n, c);
        gather::backward(&mut enc, &tdout, &trows, &tdx, n, r, c);
        enc.submit();
        let what = format!("gather R={r} N={n} C={c}");
        check(&format!("{what} out"), &block(g.read_f32(&tout)).unwrap(), &gather(&f64s(&x), &rows, c), GATHER);
        let want = gather_backward(&f64s(&dout), &rows, r, c);
        check(&format!("{what} dx"), &block(g.read_f32(&tdx)).unwrap(), &want, GATHER);
    }
}

/// The loss head's chunked backward: dx cleared once, then each chunk of rows scattered
/// through views at the chunk's start (chunk starts are multiples of 64 rows, so the views
/// keep the 256-byte binding alignment). Must equal the one-shot adjoint bit for bit.
#[test]
fn gather_scatter_in_chunks_matches_reference() {
    let g = gpu();
    let mut rng = Rng::new(11);
    for &(r, n, c, chunk) in &[(300, 200, 7, 64), (1000, 999, 3, 256), (129, 129, 5, 64), (70, 65, 1, 64)] {
        let dout = rng.vec(n * c, 1.0);
        let rows = distinct_rows(&mut rng, r, n);
        let trows = g.upload_u32("rows", &rows).unwrap();
        let tdout = g.upload_f32("dout", &dout).unwrap();
        let tdx = g.upload_f32("dx", &vec![f32::NAN; r * c]).unwrap();
        let mut enc = Encoder::new(g);
        webtune::ops::fill::fill(&mut enc, &tdx, 0.0, r * c);
        for at in (0..n).step_by(chunk) {
            let k = chunk.min(n - at);
            gather::scatter(&mut enc, &tdout.view(at * c, k * c), &trows.view(at, k), &tdx, k, c);
        }
        enc.submit();
        let want = gather_backward(&f64s(&dout), &rows, r, c);
        let what = format!("gather scatter R={r} N={n} C={c} chunk {chunk}");
        check(&what, &block(g.read_f32(&tdx)).unwrap(), &want, GATHER);
    }
}
