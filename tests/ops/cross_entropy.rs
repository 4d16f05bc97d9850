use webtune::gpu::Encoder;
use webtune::ops::cross_entropy::forward_backward;

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::cross_entropy::{cross_entropy, weighted_loss};
use crate::reference::{assert_grad, numeric_grad};

/// nll = (max - logit[target]) + log(sum): the difference is exact, the sum of V terms of
/// exp (a few ulp each) errs by ~1e-7 relative, and log of it adds an absolute ~1e-7;
/// 2e-6 absolute plus 1e-6 of the largest loss leaves room for lavapipe's exp.
const CE_NLL: Tol = Tol { name: "CE_NLL", abs: 2e-6, rel: 1e-6 };
/// dlogits = w * (exp(x - max) / sum - onehot): a few ulp of each probability, and at the
/// target an absolute ulp(1) from subtracting the one-hot; bounded by 1e-6 of max|dlogit|
/// plus 1e-7 absolute for rows whose gradient is all tiny.
const CE_GRAD: Tol = Tol { name: "CE_GRAD", abs: 1e-7, rel: 1e-6 };

const VOCABS: &[usize] = &[1, 7, 1000, 49152, 50257];
const ROWS: &[usize] = &[1, 3, 70];

/// Row weights in [0, 1] with every third row 0 (a row that carries no loss).
fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|i| if i % 3 == 1 { 0.0 } else { rng.uniform() as f32 }).collect()
}

/// Run the GPU kernel and compare both outputs with the reference; returns the worst
/// errors (nll, dlogits) relative to max|want|, the latter 0 where every gradient is below
/// 1e-30 (a row whose target dominates: there only CE_GRAD's absolute term applies, and the
/// ratio of two denormal-scale numbers says nothing).
fn run(what: &str, logits: &[f32], targets: &[u32], w: &[f32], n: usize, v: usize) -> (f64, f64) {
    let g = gpu();
    let tl = g.upload_f32("logits", logits).unwrap();
    let tt = g.upload_u32("targets", targets).unwrap();
    let tw = g.upload_f32("weights", w).unwrap();
    let tnll = g.upload_f32("nll", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward_backward(&mut enc, &tl, &tt, &tw, &tnll, n, v);
    enc.submit();
    let (nll, d) = cross_entropy(&f64s(logits), targets, &f64s(w), n, v);
    let e1 = check(&format!("{what} nll"), &block(g.read_f32(&tnll)).unwrap(), &nll, CE_NLL);
    let e2 = check(&format!("{what} dlogits"), &block(g.read_f32(&tl)).unwrap(), &d, CE_GRAD);
    let tiny = d.iter().all(|x| x.abs() < 1e-30);
    (e1, if tiny { 0.0 } else { e2 })
}

#[test]
fn cross_entropy_matches_reference() {
    let mut rng = Rng::new(20);
    let mut worst = (0f64, 0f64);
    for &v in VOCABS {
        for &n in ROWS {
            let logits = rng.vec(n * v, 2.0);
            let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
            let w = weights(&mut rng, n);
            let (a, b) = run(&format!("CE N={n} V={v}"), &logits, &targets, &w, n, v);
            worst = (worst.0.max(a), worst.1.max(b));
        }
    }
    println!("cross_entropy worst relative error: nll {:.2e}, dlogits {:.2e}", worst.0, worst.1);
}

/// Logits of magnitude 80 overflow exp in f32 without the max shift (e^80 > 3.4e38), and a
/// row offset of 1000 would lose every probability to rounding if the shift were
/// applied after exponentiation. Includes rows where the target is the (dominant) max.
#[test]
fn cross_entropy_is_stable_at_large_magnitude() {
    let mut rng = Rng::new(21);
    let mut worst = (0f64, 0f64);
    for &v in VOCABS {
        for &n in ROWS {
            let mut logits: Vec<f32> = (0..n * v).map(|_| (rng.uniform() * 160.0 - 80.0) as f32).collect();
            let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
            for i in 0..n {
                match i % 3 {
                    // The target dominates: p ~ 1, the gradient at the target ~ 0.
                    0 => {
                        logits[i * v..(i + 1) * v].iter_mut().for_each(|x| *x = *x * 0.5 - 40.0);
                        logits[i * v + targets[i] as usize] = 80.0;
                    }
                    // A large common offset: only differences matter.
                    2 => logits[i * v..(i + 1) * v].iter_mut().for_each(|x| *x = *x * 0.05 + 1000.0),
                    _ => {}
                }
            }
            let w = weights(&mut rng, n);
            let (a, b) = run(&format!("CE large N={n} V={v}"), &logits, &targets, &w, n, v);
            worst = (worst.0.max(a), worst.1.max(b));
        }
    }
    println!("cross_entropy (|logit| <= 1000) worst relative error: nll {:.2e}, dlogits {:.2e}", worst.0, worst.1);
}

#[test]
fn cross_entropy_folds_grid_past_65535_rows() {
    let mut rng = Rng::new(22);
    let (n, v) = (65535 + 700, 3);
    let logits = rng.vec(n * v, 1.0);
    let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
    let w = weights(&mut rng, n);
    run("CE folded N=66235 V=3", &logits, &targets, &w, n, v);
}

#[test]
fn reference_cross_entropy_gradient_matches_finite_differences() {
    let mut rng = Rng::new(23);
    let (n, v) = (3, 7);
    let logits = f64s(&rng.vec(n * v, 2.0));
    let targets = [0u32, 6, 3];
    let w = [0.7, 0.0, 1.3];
    let (_, d) = cross_entropy(&logits, &targets, &w, n, v);
    let num = numeric_grad(&logits, 1e-5, |l| weighted_loss(l, &targets, &w, n, v));
    assert_grad("cross_entropy dlogits", &d, &num);
}
