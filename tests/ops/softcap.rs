use webtune::gpu::Encoder;
use webtune::ops::softcap::{backward, forward};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::softcap::{softcap, softcap_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// One division, one exp (or a degree-13 polynomial below |u| = 0.4) and a few roundings
/// per element; the tensor's scale is at most cap (forward) or max |dy| (backward). Worst
/// seen: see the printed figures (within 3e-7).
const SOFTCAP: Tol = Tol { name: "SOFTCAP", abs: 0.0, rel: 1e-6 };
/// Single elements held to their own scale: exp's error (Vulkan allows 3 + 2|x| ulp) grows
/// with its argument (2t up to 80 at the clamp), so the tiny 1 - tanh^2 of a saturated
/// logit carries a few 1e-7 of itself (worst seen 2.9e-7 at |z / cap| = 4); tanh itself
/// stays within 1e-7. Past the clamp
/// (|z / cap| > 40) the kernel reports 1 - tanh^2 = 4 exp(-80) = 7.2e-35 where the truth
/// is smaller: times |dy| = 1.3, below the absolute 1e-34.
const SOFTCAP_TAIL: Tol = Tol { name: "SOFTCAP_TAIL", abs: 1e-34, rel: 2e-6 };

const SIZES: &[usize] = &[1, 3, 7, 129, 1000, 33 * 1000 + 5];

fn run(z: &[f32], dy: &[f32], cap: f32, tol: Tol, what: &str) {
    let g = gpu();
    let n = z.len();
    let (tz, td) = (g.upload_f32("z", z).unwrap(), g.upload_f32("dy", dy).unwrap());
    // Overwritten: start at garbage.
    let y = g.upload_f32("y", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tz, &y, cap, n);
    // In place: tz becomes dz (after the forward has read it).
    backward(&mut enc, &tz, &td, cap, n);
    enc.submit();
    let (zd, dd, c) = (f64s(z), f64s(dy), cap as f64);
    let ey = check(&format!("{what} y"), &block(g.read_f32(&y)).unwrap(), &softcap(&zd, c), tol);
    let ez = check(&format!("{what} dz"), &block(g.read_f32(&tz)).unwrap(), &softcap_backward(&zd, &dd, c), tol);
    eprintln!("{what}: worst rel y {ey:.2e} dz {ez:.2e}");
}

#[test]
fn softcap_matches_reference() {
    let mut rng = Rng::new(61);
    for &n in SIZES {
        for cap in [5.0f32, 30.0] {
            // Logits a few caps wide, so both branches and saturation are covered.
            run(&rng.vec(n, 3.0 * cap as f64), &rng.vec(n, 1.0), cap, SOFTCAP, &format!("softcap n={n} cap={cap}"));
        }
    }
    // Around the branch point |z / cap| = 0.4 and near zero.
    let z: Vec<f32> = (-40..=40).map(|i| 2.0 + i as f32 * 1e-3).chain([0.0, 1e-30, -1e-7, 1.999, -2.001]).collect();
    run(&z, &vec![1.0; z.len()], 5.0, SOFTCAP, "softcap around |u| = 0.4");
}

// Saturation and extremes, one element at a time, each held to its own scale.
#[test]
fn softcap_tails_stay_finite_and_accurate() {
    for zv in [-3e38f32, -1e6, -100.0, -50.0, -20.0, -2.0, -1e-3, 0.0, 1e-3, 2.0, 20.0, 50.0, 100.0, 1e6, 3e38] {
        run(&[zv], &[1.3], 5.0, SOFTCAP_TAIL, &format!("softcap z={zv}"));
    }
}

#[test]
fn reference_softcap_backward_matches_finite_differences() {
    let mut rng = Rng::new(62);
    let z = f64s(&rng.vec(11, 10.0));
    let proj = f64s(&rng.vec(11, 1.0));
    let grad = softcap_backward(&z, &proj, 5.0);
    assert_grad("softcap dz", &grad, &numeric_grad(&z, 1e-5, |z| dot(&proj, &softcap(z, 5.0))));
}
