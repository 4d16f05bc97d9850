use webtune::gpu::Encoder;
use webtune::ops::matmul::{matmul_variant, Linear, Op, Variant, WeightLayout};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::matmul::{linear, linear_backward, transpose};
use crate::reference::{assert_grad, dot, numeric_grad};

/// f32 sums of K products with random signs err by ~sqrt(K) * 2^-24 of the output scale;
/// 2e-6 relative covers K up to a few thousand with margin, and catches any wrong index.
const MATMUL: Tol = Tol { name: "MATMUL", abs: 1e-6, rel: 2e-6 };

// Awkward shapes: 1, primes, sizes straddling the 64-wide tile and the 16-deep K step.
const SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1), (1, 7, 3), (5, 1, 17), (63, 65, 15), (64, 64, 16), (70, 33, 129), (3, 130, 257), (128, 96, 80)];

#[test]
fn matmul_all_transposes_match_reference() {
    let g = gpu();
    let mut rng = Rng::new(1);
    for &(m, n, k) in SHAPES {
        for a_op in [Op::N, Op::T] {
            for b_op in [Op::N, Op::T] {
                let a = rng.vec(m * k, 1.0); // op(A) is (m, k)
                let b = rng.vec(k * n, 1.0); // op(B) is (k, n)
                let c0 = rng.vec(m * n, 1.0);
                // The reference works on the logical matrices; the GPU on the stored layout.
                let a_logical = if a_op == Op::N { f64s(&a) } else { transpose(&f64s(&a), k, m) };
                let b_logical = if b_op == Op::N { f64s(&b) } else { transpose(&f64s(&b), n, k) };
                // linear() computes x W^T, so pass B^T as W.
                let bt = transpose(&b_logical, k, n);
                let want = linear(&a_logical, &bt, None, m, k, n);
                // The accumulating call also scales the product (LoRA's alpha), on every
                // kernel path (tiles, registers, and the few-rows kernel for m <= 4).
                let alpha = 0.37f32;
                let want_acc: Vec<f64> = want.iter().zip(&c0).map(|(w, c)| alpha as f64 * w + *c as f64).collect();

                let ta = g.upload_f32("a", &a).unwrap();
                let tb = g.upload_f32("b", &b).unwrap();
                let tc2 = g.zeros("c2", m * n).unwrap();
                for variant in [Variant::Tiled, Variant::Reg] {
                    let tc = g.upload_f32("c", &c0).unwrap();
                    let mut enc = Encoder::new(g);
                    matmul_variant(&mut enc, variant, (m, n, k), alpha, &ta, a_op, &tb, b_op, None, None, &tc, true);
                    matmul_variant(&mut enc, variant, (m, n, k), 1.0, &ta, a_op, &tb, b_op, None, None, &tc2, false);
                    enc.submit();
                    let what = format!("matmul {variant:?} {m}x{n}x{k} {a_op:?}{b_op:?}");
                    check(&format!("{what} accumulate"), &block(g.read_f32(&tc)).unwrap(), &want_acc, MATMUL);
                    check(&what, &block(g.read_f32(&tc2)).unwrap(), &want, MATMUL);
                }
            }
        }
    }
}

#[test]
fn linear_forward_backward_both_layouts() {
    let g = gpu();
    let mut rng = Rng::new(2);
    for &(rows, fin, fout) in &[(1, 5, 3), (9, 64, 65), (33, 17, 130)] {
        for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
            let x = rng.vec(rows * fin, 1.0);
            let w_outin = rng.vec(fout * fin, 0.5);
            let bias = rng.vec(fout, 0.5);
            let resid = rng.vec(rows * fout, 1.0);
            let dy = rng.vec(rows * fout, 1.0);
            let w_stored: Vec<f32> = match layout {
                WeightLayout::OutIn => w_outin.clone(),
                WeightLayout::InOut => transpose(&f64s(&w_outin), fout, fin).iter().map(|&v| v as f32).collect(),
            };
            let (xd, wd, bd, dyd) = (f64s(&x), f64s(&w_outin), f64s(&bias), f64s(&dy));
            let y_ref: Vec<f64> =
                linear(&xd, &wd, Some(&bd), rows, fin, fout).iter().zip(&resid).map(|(y, r)| y + *r as f64).collect();
            let (dx_ref, dw_ref, db_ref) = linear_backward(&dyd, &xd, &wd, rows, fin, fout);

            let lin = Linear { rows, fan_in: fin, fan_out: fout, layout };
            let (tx, tw, tb, tr, tdy) = (
                g.upload_f32("x", &x).unwrap(),
                g.upload_f32("w", &w_stored).unwrap(),
                g.upload_f32("b", &bias).unwrap(),
                g.upload_f32("r", &resid).unwrap(),
                g.upload_f32("dy", &dy).unwrap(),
            );
            let ty = g.zeros("y", rows * fout).unwrap();
            let tdx = g.zeros("dx", rows * fin).unwrap();
            let tdw = g.zeros("dw", fout * fin).unwrap();
            let tdb = g.zeros("db", fout).unwrap();
            let mut enc = Encoder::new(g);
            lin.forward(&mut enc, &tx, &tw, Some(&tb), Some(&tr), &ty, false);
            lin.backward_input(&mut enc, &tdy, &tw, &tdx, false);
            lin.backward_weight(&mut enc, &tdy, &tx, &tdw, Some(&tdb));
            enc.submit();
            let what = format!("linear {rows}x{fin}->{fout} {layout:?}");
            check(&format!("{what} y"), &block(g.read_f32(&ty)).unwrap(), &y_ref, MATMUL);
            check(&format!("{what} dx"), &block(g.read_f32(&tdx)).unwrap(), &dx_ref, MATMUL);
            let dw_want = match layout {
                WeightLayout::OutIn => dw_ref.clone(),
                WeightLayout::InOut => transpose(&dw_ref, fout, fin),
            };
            check(&format!("{what} dW"), &block(g.read_f32(&tdw)).unwrap(), &dw_want, MATMUL);
            check(&format!("{what} db"), &block(g.read_f32(&tdb)).unwrap(), &db_ref, MATMUL);
        }
    }
}

#[test]
fn reference_linear_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let (rows, fin, fout) = (3, 4, 5);
    let x = f64s(&rng.vec(rows * fin, 1.0));
    let w = f64s(&rng.vec(fout * fin, 1.0));
    let b = f64s(&rng.vec(fout, 1.0));
    let proj = f64s(&rng.vec(rows * fout, 1.0));
    let (dx, dw, db) = linear_backward(&proj, &x, &w, rows, fin, fout);
    let h = 1e-5;
    assert_grad("linear dx", &dx, &numeric_grad(&x, h, |x| dot(&proj, &linear(x, &w, Some(&b), rows, fin, fout))));
    assert_grad("linear dW", &dw, &numeric_grad(&w, h, |w| dot(&proj, &linear(&x, w, Some(&b), rows, fin, fout))));
    assert_grad("linear db", &db, &numeric_grad(&b, h, |b| dot(&proj, &linear(&x, &w, Some(b), rows, fin, fout))));
}
