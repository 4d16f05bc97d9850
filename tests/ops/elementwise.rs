use webtune::gpu::Encoder;
use webtune::ops::{gelu, swiglu};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::gelu::GELU;
use crate::reference;
use crate::swiglu::SWIGLU;

// More than 65535 * 256 elements: the 1-D grid folds into y and `flat_id` must unfold it.
// Every elementwise entry point runs once at that size against its reference (one at a
// time, reusing one output buffer, to keep memory down on a shared machine). Dropout and
// fill run at that size in their own tests.
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
}
