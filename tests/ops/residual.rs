use webtune::gpu::Encoder;
use webtune::ops::{gelu, residual, swiglu};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::gelu::GELU;
use crate::reference;
use crate::reference::residual::residual;
use crate::reference::{assert_grad, dot, numeric_grad};
use crate::swiglu::SWIGLU;

/// One f32 add: half an ulp of the result.
const RESIDUAL: Tol = Tol { name: "RESIDUAL", abs: 0.0, rel: 1.2e-7 };

const SIZES: &[usize] = &[1, 3, 7, 129, 576, 1000, 33 * 1000 + 5];

fn run(rng: &mut Rng, n: usize) {
    let g = gpu();
    let (a, b, dout, da0) = (rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
    let up = |name, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (ta, tb, td, tda) = (up("a", &a), up("b", &b), up("dout", &dout), up("da", &da0));
    let out = g.zeros("out", n).unwrap();
    let mut enc = Encoder::new(g);
    residual::forward(&mut enc, &ta, &tb, &out, n);
    residual::backward(&mut enc, &td, &tda, n);
    enc.submit();
    let what = format!("residual n={n}");
    check(&format!("{what} out"), &block(g.read_f32(&out)).unwrap(), &residual(&f64s(&a), &f64s(&b)), RESIDUAL);
    check(&format!("{what} da"), &block(g.read_f32(&tda)).unwrap(), &residual(&f64s(&da0), &f64s(&dout)), RESIDUAL);
}

#[test]
fn residual_matches_reference() {
    let mut rng = Rng::new(61);
    for &n in SIZES {
        run(&mut rng, n);
    }
}

// More than 65535 * 256 elements: the 1-D grid folds into y and `flat_id` must unfold it.
// Every elementwise entry point runs once at that size against its reference (one at a
// time, reusing one output buffer, to keep memory down on a shared machine).
#[test]
fn elementwise_kernels_fold_the_grid() {
    let g = gpu();
    let n = 65535 * 256 + 300;
    let mut rng = Rng::new(62);
    let (x, y) = (rng.vec(n, 2.0), rng.vec(n, 1.0));
    let (xd, yd) = (f64s(&x), f64s(&y));
    let (tx, ty) = (g.upload_f32("x", &x).unwrap(), g.upload_f32("y", &y).unwrap());
    let out = g.zeros("out", n).unwrap();
    let out2 = g.zeros("out2", n).unwrap();
    let nan = vec![f32::NAN; n];
    type Launch<'a> = Box<dyn Fn(&mut Encoder) + 'a>;
    let cases: Vec<(&str, Launch, Vec<f64>, Tol)> = vec![
        ("residual", Box::new(|e| residual::forward(e, &tx, &ty, &out, n)), residual(&xd, &yd), RESIDUAL),
        ("gelu", Box::new(|e| gelu::forward(e, &tx, &out, n)), reference::gelu::gelu(&xd), GELU),
        ("gelu dx", Box::new(|e| gelu::backward(e, &tx, &ty, &out, n)), reference::gelu::gelu_backward(&xd, &yd), GELU),
        ("swiglu", Box::new(|e| swiglu::forward(e, &tx, &ty, &out, n)), reference::swiglu::swiglu(&xd, &yd), SWIGLU),
        (
            "swiglu dgate",
            Box::new(|e| swiglu::backward(e, &tx, &ty, &ty, &out, &out2, n)),
            reference::swiglu::swiglu_backward(&xd, &yd, &yd).0,
            SWIGLU,
        ),
    ];
    for (name, launch, want, tol) in cases {
        g.write_f32(&out, &nan);
        let mut enc = Encoder::new(g);
        launch(&mut enc);
        enc.submit();
        check(&format!("{name} n={n}"), &block(g.read_f32(&out)).unwrap(), &want, tol);
    }
    // residual backward accumulates into y.
    let mut enc = Encoder::new(g);
    residual::backward(&mut enc, &tx, &ty, n);
    enc.submit();
    check(&format!("residual da n={n}"), &block(g.read_f32(&ty)).unwrap(), &residual(&yd, &xd), RESIDUAL);
}

#[test]
fn reference_residual_gradient_matches_finite_differences() {
    let mut rng = Rng::new(63);
    let a = f64s(&rng.vec(7, 1.0));
    let b = f64s(&rng.vec(7, 1.0));
    let proj = f64s(&rng.vec(7, 1.0));
    // The gradient of either input is dout itself.
    assert_grad("residual da", &proj, &numeric_grad(&a, 1e-5, |a| dot(&proj, &residual(a, &b))));
    assert_grad("residual db", &proj, &numeric_grad(&b, 1e-5, |b| dot(&proj, &residual(&a, b))));
}
