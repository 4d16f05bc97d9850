use webtune::gpu::Encoder;
use webtune::ops::gelu::{backward, forward, geglu_backward, geglu_forward};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::gelu::{geglu, geglu_backward as geglu_backward_ref, gelu, gelu_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// x * sigmoid(2u): a cubic, one exp and a few roundings per element (worst seen 1.2e-7).
pub const GELU: Tol = Tol { name: "GELU", abs: 0.0, rel: 5e-7 };
/// Single elements held to their own scale. exp(t) turns t's rounding (|t| 2^-24) into a
/// relative error of |t| 2^-24, ~5e-6 at the |t| = 80 clamp (Vulkan's exp itself may be off
/// by 3 + 2|t| ulp): 1.2e-6 seen at x = -5. Below x ~ -6 the f64 reference's 1 + tanh cancels
/// to 0 (error ~|x| 1e-16) while the GPU keeps the tiny true value, hence abs 1e-12.
const GELU_TAIL: Tol = Tol { name: "GELU_TAIL", abs: 1e-12, rel: 1e-5 };

const SIZES: &[usize] = &[1, 3, 7, 129, 576, 1000, 33 * 1000 + 5];

fn run(x: &[f32], dout: &[f32], tol: Tol, what: &str) {
    let g = gpu();
    let n = x.len();
    let (tx, td) = (g.upload_f32("x", x).unwrap(), g.upload_f32("dout", dout).unwrap());
    let out = g.zeros("out", n).unwrap();
    // Overwritten: start at garbage.
    let dx = g.upload_f32("dx", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tx, &out, n);
    backward(&mut enc, &tx, &td, &dx, n);
    enc.submit();
    let (xd, dd) = (f64s(x), f64s(dout));
    let eo = check(&format!("{what} out"), &block(g.read_f32(&out)).unwrap(), &gelu(&xd), tol);
    let ed = check(&format!("{what} dx"), &block(g.read_f32(&dx)).unwrap(), &gelu_backward(&xd, &dd), tol);
    eprintln!("{what}: worst rel out {eo:.2e} dx {ed:.2e}");
}

#[test]
fn gelu_matches_reference() {
    let mut rng = Rng::new(51);
    for &n in SIZES {
        run(&rng.vec(n, 3.0), &rng.vec(n, 1.0), GELU, &format!("gelu n={n}"));
    }
}

// Large |x|, where tanh is NaN on some drivers, x^3 overflows f32 and 1 + tanh cancels:
// one element at a time, each held to its own scale (the negative tail's true value is
// below 1e-30, hence GELU_TAIL's absolute part).
#[test]
fn gelu_tails_stay_finite_and_accurate() {
    for xv in [
        -3e38f32, -1e20, -1e4, -100.0, -30.0, -15.0, -9.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 9.0, 15.0, 30.0, 1e4, 1e20,
        3e38,
    ] {
        run(&[xv], &[1.3], GELU_TAIL, &format!("gelu x={xv}"));
    }
}

#[test]
fn reference_gelu_backward_matches_finite_differences() {
    let mut rng = Rng::new(52);
    let x = f64s(&rng.vec(11, 3.0));
    let proj = f64s(&rng.vec(11, 1.0));
    assert_grad("gelu dx", &gelu_backward(&x, &proj), &numeric_grad(&x, 1e-5, |x| dot(&proj, &gelu(x))));
}

/// GeGLU (Gemma's MLP): the GELU above times the up projection, and both gradients, against
/// the f64 reference; the same per-element rounding budget as GELU and SwiGLU, plus one
/// product (GELU's tolerance covers it: worst seen within 2e-7).
fn run_geglu(gate: &[f32], up: &[f32], dout: &[f32], tol: Tol, what: &str) {
    let g = gpu();
    let n = gate.len();
    let (tg, tu, td) =
        (g.upload_f32("gate", gate).unwrap(), g.upload_f32("up", up).unwrap(), g.upload_f32("dout", dout).unwrap());
    let out = g.zeros("out", n).unwrap();
    // Both gradients are overwritten: start them at garbage.
    let dgate = g.upload_f32("dgate", &vec![f32::NAN; n]).unwrap();
    let dup = g.upload_f32("dup", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    geglu_forward(&mut enc, &tg, &tu, &out, n);
    geglu_backward(&mut enc, &tg, &tu, &td, &dgate, &dup, n);
    enc.submit();
    let (gd, ud, dd) = (f64s(gate), f64s(up), f64s(dout));
    let (dg_ref, du_ref) = geglu_backward_ref(&gd, &ud, &dd);
    let eo = check(&format!("{what} out"), &block(g.read_f32(&out)).unwrap(), &geglu(&gd, &ud), tol);
    let eg = check(&format!("{what} dgate"), &block(g.read_f32(&dgate)).unwrap(), &dg_ref, tol);
    let eu = check(&format!("{what} dup"), &block(g.read_f32(&dup)).unwrap(), &du_ref, tol);
    eprintln!("{what}: worst rel out {eo:.2e} dgate {eg:.2e} dup {eu:.2e}");
}

#[test]
fn geglu_matches_reference() {
    let mut rng = Rng::new(53);
    for &n in SIZES {
        run_geglu(&rng.vec(n, 3.0), &rng.vec(n, 1.0), &rng.vec(n, 1.0), GELU, &format!("geglu n={n}"));
    }
    // The tails, one element at a time, held to their own scale (up to 1e38: dup =
    // 1.3 gelu(gate) must stay a finite f32).
    for xv in [-3e38f32, -1e4, -30.0, -9.0, -5.0, 0.0, 5.0, 30.0, 1e4, 1e38] {
        run_geglu(&[xv], &[0.7], &[1.3], GELU_TAIL, &format!("geglu gate={xv}"));
    }
}

#[test]
fn reference_geglu_backward_matches_finite_differences() {
    let mut rng = Rng::new(54);
    let (gate, up) = (f64s(&rng.vec(11, 3.0)), f64s(&rng.vec(11, 1.0)));
    let proj = f64s(&rng.vec(11, 1.0));
    let (dg, du) = geglu_backward_ref(&gate, &up, &proj);
    assert_grad("geglu dgate", &dg, &numeric_grad(&gate, 1e-5, |g| dot(&proj, &geglu(g, &up))));
    assert_grad("geglu dup", &du, &numeric_grad(&up, 1e-5, |u| dot(&proj, &geglu(&gate, u))));
}
