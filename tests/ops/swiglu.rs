use webtune::gpu::Encoder;
use webtune::ops::swiglu::{backward, forward};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::swiglu::{swiglu, swiglu_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// A few roundings and one exp per element (worst seen 2e-7 of the output scale); abs
/// allows denormal results to be flushed to zero, as WGSL permits.
pub const SWIGLU: Tol = Tol { name: "SWIGLU", abs: 1e-36, rel: 5e-7 };
/// Single saturated elements held to their own scale, where the value is exp(-|g|) itself:
/// Vulkan lets exp err by 3 + 2|g| ulp (~7e-6 at |g| = 30; 1.2e-6 seen), and denormals
/// may flush to zero.
const SWIGLU_TAIL: Tol = Tol { name: "SWIGLU_TAIL", abs: 1e-36, rel: 1e-5 };

const SIZES: &[usize] = &[1, 3, 7, 129, 576, 1000, 33 * 1000 + 5];

fn run(gate: &[f32], up: &[f32], dout: &[f32], tol: Tol, what: &str) {
    let g = gpu();
    let n = gate.len();
    let (tg, tu, td) =
        (g.upload_f32("gate", gate).unwrap(), g.upload_f32("up", up).unwrap(), g.upload_f32("dout", dout).unwrap());
    let out = g.zeros("out", n).unwrap();
    // Both gradients are overwritten: start them at garbage.
    let dgate = g.upload_f32("dgate", &vec![f32::NAN; n]).unwrap();
    let dup = g.upload_f32("dup", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tg, &tu, &out, n);
    backward(&mut enc, &tg, &tu, &td, &dgate, &dup, n);
    enc.submit();
    let (gd, ud, dd) = (f64s(gate), f64s(up), f64s(dout));
    let (dg_ref, du_ref) = swiglu_backward(&gd, &ud, &dd);
    let eo = check(&format!("{what} out"), &block(g.read_f32(&out)).unwrap(), &swiglu(&gd, &ud), tol);
    let eg = check(&format!("{what} dgate"), &block(g.read_f32(&dgate)).unwrap(), &dg_ref, tol);
    let eu = check(&format!("{what} dup"), &block(g.read_f32(&dup)).unwrap(), &du_ref, tol);
    eprintln!("{what}: worst rel out {eo:.2e} dgate {eg:.2e} dup {eu:.2e}");
}

#[test]
fn swiglu_matches_reference() {
    let mut rng = Rng::new(41);
    for &n in SIZES {
        let (gate, up, dout) = (rng.vec(n, 3.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        run(&gate, &up, &dout, SWIGLU, &format!("swiglu n={n}"));
    }
}

// Saturated gates, where exp overflows if taken of a positive argument and 1 - sigmoid
// cancels: checked one element at a time so each is held to its own scale.
#[test]
fn swiglu_saturated_gates_stay_finite_and_accurate() {
    for gv in [-1e30f32, -1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4, 1e30] {
        run(&[gv], &[0.7], &[1.3], SWIGLU_TAIL, &format!("swiglu gate={gv}"));
    }
}

#[test]
fn reference_swiglu_backward_matches_finite_differences() {
    let mut rng = Rng::new(42);
    let n = 9;
    let gate = f64s(&rng.vec(n, 3.0));
    let up = f64s(&rng.vec(n, 1.0));
    let proj = f64s(&rng.vec(n, 1.0));
    let (dg, du) = swiglu_backward(&gate, &up, &proj);
    let h = 1e-5;
    assert_grad("swiglu dgate", &dg, &numeric_grad(&gate, h, |g| dot(&proj, &swiglu(g, &up))));
    assert_grad("swiglu dup", &du, &numeric_grad(&up, h, |u| dot(&proj, &swiglu(&gate, u))));
}
