use webtune::gpu::Encoder;
use webtune::ops::layernorm::{backward, forward, scratch_len};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::layernorm::{layernorm, layernorm_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// Sums as RMSNORM's, plus the f32 mean's rounding amplified by rstd: with |mean| / std
/// <= ~15 here, ~1e-6 of the output scale at worst (5.3e-7 seen).
const LAYERNORM: Tol = Tol { name: "LAYERNORM", abs: 1e-7, rel: 1.5e-6 };
/// dx multiplies the mean's rounding by rstd once more (rstd * xhat * mean(g xhat)); worst
/// seen 1.5e-6 over 70001 rows of C = 3. dw and db are 33-term sums (4e-7 seen).
const LAYERNORM_GRAD: Tol = Tol { name: "LAYERNORM_GRAD", abs: 1e-7, rel: 4e-6 };

const EPS: f32 = 1e-5; // GPT-2's layer_norm_epsilon

// Rows past bias::ROW_CHUNK (32) take dw/db's two stages: ragged (33, 97), exact (64),
// many chunks (1000).
const SHAPES: &[(usize, usize)] =
    &[(1, 1), (5, 1), (5, 3), (33, 7), (1, 129), (33, 129), (5, 576), (33, 1000), (64, 65), (97, 257), (1000, 5)];

/// The GPU's forward and backward against the f64 reference. Rows get an offset of up to
/// 4 standard deviations, as GPT-2's residual stream has, which a one-pass E[x^2] - mean^2
/// variance would get wrong. Rows with a sample std below 0.3 (frequent at C = 3) are
/// redrawn: the f32 mean's rounding, |mean| 2^-24, is amplified by rstd in every output,
/// so an f32 LayerNorm's error grows as |mean| / std whatever the implementation.
fn run(rng: &mut Rng, rows: usize, c: usize, accumulate: bool, grads: (bool, bool)) {
    run_with(rng, rows, c, accumulate, grads, true)
}

/// `two_stage`: dw/db through a scratch pre-filled with NaN (the first stage must write it,
/// not read it).
fn run_with(rng: &mut Rng, rows: usize, c: usize, accumulate: bool, grads: (bool, bool), two_stage: bool) {
    let g = gpu();
    let mut x = Vec::with_capacity(rows * c);
    while x.len() < rows * c {
        let off = (rng.uniform() * 8.0 - 4.0) as f32;
        let row: Vec<f32> = rng.vec(c, 1.0).iter().map(|v| v + off).collect();
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
        if c == 1 || var >= 0.09 {
            x.extend(row);
        }
    }
    let w: Vec<f32> = rng.vec(c, 0.2).iter().map(|v| v + 1.0).collect();
    let b = rng.vec(c, 0.5);
    let dy = rng.vec(rows * c, 1.0);
    let dx0 = if accumulate { rng.vec(rows * c, 1.0) } else { vec![f32::NAN; rows * c] };
    let (dw0, db0) = (rng.vec(c, 1.0), rng.vec(c, 1.0));
    let (xd, wd, bd, dyd) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
    let (y_ref, mean_ref, rstd_ref) = layernorm(&xd, &wd, &bd, rows, c, EPS as f64);
    let (mut dx_ref, mut dw_ref, mut db_ref) = layernorm_backward(&xd, &wd, &bd, &dyd, rows, c, EPS as f64);
    if accumulate {
        dx_ref.iter_mut().zip(&dx0).for_each(|(d, d0)| *d += *d0 as f64);
    }
    dw_ref.iter_mut().zip(&dw0).for_each(|(d, d0)| *d += *d0 as f64);
    db_ref.iter_mut().zip(&db0).for_each(|(d, d0)| *d += *d0 as f64);

    let up = |name, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (tx, tw, tb, tdy) = (up("x", &x), up("w", &w), up("b", &b), up("dy", &dy));
    let (ty, tmean, trstd) =
        (g.zeros("y", rows * c).unwrap(), g.zeros("mean", rows).unwrap(), g.zeros("rstd", rows).unwrap());
    // Overwriting must not read dx: NaN there would show it.
    let (tdx, tdw, tdb) = (up("dx", &dx0), up("dw", &dw0), up("db", &db0));
    let scratch = two_stage.then(|| up("scratch", &vec![f32::NAN; scratch_len(rows, c)]));
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tx, &tw, &tb, &ty, &tmean, &trstd, rows, c, EPS);
    let (dw_arg, db_arg) = (grads.0.then_some(&tdw), grads.1.then_some(&tdb));
    backward(&mut enc, &tx, &tw, &tmean, &trstd, &tdy, &tdx, accumulate, dw_arg, db_arg, scratch.as_ref(), rows, c);
    enc.submit();
    let what = format!("layernorm {rows}x{c} acc={accumulate} grads={grads:?} two_stage={two_stage}");
    let read = |t| block(g.read_f32(t)).unwrap();
    let ey = check(&format!("{what} y"), &read(&ty), &y_ref, LAYERNORM);
    let em = check(&format!("{what} mean"), &read(&tmean), &mean_ref, LAYERNORM);
    let er = check(&format!("{what} rstd"), &read(&trstd), &rstd_ref, LAYERNORM);
    let edx = check(&format!("{what} dx"), &read(&tdx), &dx_ref, LAYERNORM_GRAD);
    // An absent gradient must be left as it was.
    let dw_want = if grads.0 { dw_ref } else { f64s(&dw0) };
    let db_want = if grads.1 { db_ref } else { f64s(&db0) };
    let edw = check(&format!("{what} dw"), &read(&tdw), &dw_want, LAYERNORM_GRAD);
    let edb = check(&format!("{what} db"), &read(&tdb), &db_want, LAYERNORM_GRAD);
    eprintln!("{what}: worst rel y {ey:.2e} mean {em:.2e} rstd {er:.2e} dx {edx:.2e} dw {edw:.2e} db {edb:.2e}");
}

#[test]
fn layernorm_matches_reference() {
    let mut rng = Rng::new(31);
    for &(rows, c) in SHAPES {
        run(&mut rng, rows, c, false, (true, true));
        run(&mut rng, rows, c, true, (true, true));
        run_with(&mut rng, rows, c, true, (true, true), false);
    }
}

#[test]
fn layernorm_optional_weight_grads() {
    let mut rng = Rng::new(32);
    for grads in [(true, false), (false, true), (false, false)] {
        run(&mut rng, 5, 129, true, grads);
        run(&mut rng, 97, 129, true, grads);
    }
}

// More rows than one grid dimension's 65535 workgroups: the row index folds into y.
#[test]
fn layernorm_many_rows_fold_the_grid() {
    run(&mut Rng::new(33), 70_001, 3, false, (false, false));
}

#[test]
fn reference_layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(34);
    let (rows, c, eps) = (3, 5, 1e-5);
    let x = f64s(&rng.vec(rows * c, 1.0));
    let w = f64s(&rng.vec(c, 1.0));
    let b = f64s(&rng.vec(c, 1.0));
    let proj = f64s(&rng.vec(rows * c, 1.0));
    let (dx, dw, db) = layernorm_backward(&x, &w, &b, &proj, rows, c, eps);
    let h = 1e-5;
    let f = |x: &[f64], w: &[f64], b: &[f64]| dot(&proj, &layernorm(x, w, b, rows, c, eps).0);
    assert_grad("layernorm dx", &dx, &numeric_grad(&x, h, |x| f(x, &w, &b)));
    assert_grad("layernorm dw", &dw, &numeric_grad(&w, h, |w| f(&x, w, &b)));
    assert_grad("layernorm db", &db, &numeric_grad(&b, h, |b| f(&x, &w, b)));
}
