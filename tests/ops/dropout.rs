use webtune::gpu::Encoder;
use webtune::ops::dropout::{backward, forward, Mask};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::dropout::{dropout, dropout_backward};

/// One f32 multiply by 1/(1-p), itself rounded to f32: two half-ulp roundings.
const DROPOUT: Tol = Tol { name: "DROPOUT", abs: 0.0, rel: 1.25e-7 };
/// The backward adding into dx: one more rounding, on a sum that may be smaller than
/// either term (so more headroom relative to the largest element).
const DROPOUT_ACC: Tol = Tol { name: "DROPOUT_ACC", abs: 0.0, rel: 5e-7 };
/// Binomial bounds on mask statistics, in standard deviations (a fixed seed, so no flakes;
/// a broken hash is off by hundreds).
const SIGMAS: f64 = 5.0;

const SIZES: &[usize] = &[1, 3, 7, 129, 257, 1000, 33 * 1000 + 5];

/// Random values with no exact zero, so a zero in the output means "dropped".
fn nonzero(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n, 2.0).into_iter().map(|v| if v == 0.0 { 1.0 } else { v }).collect()
}

/// The kernel's mask read back from an output: kept where nonzero.
fn mask_of(out: &[f32]) -> Vec<bool> {
    out.iter().map(|&v| v != 0.0).collect()
}

/// Forward, overwriting backward and accumulating backward of one mask, against the
/// reference with the host's copy of the mask; forward and both backwards must drop
/// exactly the same elements.
fn run(rng: &mut Rng, mask: Mask, n: usize) {
    let g = gpu();
    let what = format!("dropout p={} n={n} seed={} salt={} site={}", mask.p, mask.seed, mask.salt, mask.site);
    let (x, dy, dx0) = (nonzero(rng, n), nonzero(rng, n), rng.vec(n, 1.0));
    let up = |name, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (tx, tdy, tacc) = (up("x", &x), up("dy", &dy), up("dx_acc", &dx0));
    // Overwritten: start at garbage.
    let ty = up("y", &vec![f32::NAN; n]);
    let tdx = up("dx", &vec![f32::NAN; n]);
    let mut enc = Encoder::new(g);
    forward(&mut enc, &mask, &tx, &ty, n);
    backward(&mut enc, &mask, &tdy, &tdx, n, false);
    backward(&mut enc, &mask, &tdy, &tacc, n, true);
    enc.submit();
    let (y, dx, acc) =
        (block(g.read_f32(&ty)).unwrap(), block(g.read_f32(&tdx)).unwrap(), block(g.read_f32(&tacc)).unwrap());
    let keep: Vec<bool> = (0..n as u32).map(|i| mask.kept(i)).collect();
    assert_eq!(mask_of(&y), keep, "{what}: the forward's mask is not the host's");
    assert_eq!(mask_of(&dx), keep, "{what}: the backward's mask is not the forward's");
    let p = mask.p as f64;
    check(&format!("{what} y"), &y, &dropout(&f64s(&x), &keep, p), DROPOUT);
    check(&format!("{what} dx"), &dx, &dropout_backward(&f64s(&dy), &keep, p, None), DROPOUT);
    let want = dropout_backward(&f64s(&dy), &keep, p, Some(&f64s(&dx0)));
    check(&format!("{what} dx accumulated"), &acc, &want, DROPOUT_ACC);
    // Kept elements are scaled by exactly 1/(1-p) (as f32), not just approximately.
    let scale = 1.0 / (1.0 - mask.p);
    if let Some(i) = (0..n).find(|&i| keep[i] && y[i] != x[i] * scale) {
        panic!("{what}: y[{i}] = {} is not x * 1/(1-p) = {}", y[i], x[i] * scale);
    }
}

#[test]
fn dropout_matches_reference() {
    let mut rng = Rng::new(71);
    for &n in SIZES {
        for (k, p) in [0.1f32, 0.3, 0.5, 0.9].into_iter().enumerate() {
            run(&mut rng, Mask { p, seed: 5 + k as u32, salt: 77 * n as u32, site: 3 }, n);
        }
    }
}

/// p = 0 keeps everything and the scale is exactly 1: a bit-exact copy.
#[test]
fn dropout_zero_is_a_copy() {
    let g = gpu();
    let mut rng = Rng::new(72);
    let n = 1000 + 7;
    let x = nonzero(&mut rng, n);
    let tx = g.upload_f32("x", &x).unwrap();
    let ty = g.upload_f32("y", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &Mask { p: 0.0, seed: 1, salt: 2, site: 3 }, &tx, &ty, n);
    enc.submit();
    let y = block(g.read_f32(&ty)).unwrap();
    assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "dropout p=0 must copy x exactly");
}

/// The fraction kept is 1 - p, neighbours are independent, and another seed, salt or site
/// draws another mask (agreeing on p^2 + (1-p)^2 of the elements, as independent masks do),
/// all within binomial bounds. The statistics are of the GPU's masks.
#[test]
fn dropout_mask_statistics() {
    let g = gpu();
    let n = 200_003;
    let x = g.upload_f32("x", &vec![1.0; n]).unwrap();
    let gpu_mask = |m: &Mask| {
        let y = g.zeros("y", n).unwrap();
        let mut enc = Encoder::new(g);
        forward(&mut enc, m, &x, &y, n);
        enc.submit();
        mask_of(&block(g.read_f32(&y)).unwrap())
    };
    let within = |what: &str, count: usize, trials: usize, q: f64| {
        let sd = (q * (1.0 - q) / trials as f64).sqrt();
        let f = count as f64 / trials as f64;
        assert!(
            (f - q).abs() <= SIGMAS * sd,
            "{what}: {count}/{trials} = {f:.5}, expected {q:.5} +- {:.5}",
            SIGMAS * sd
        );
    };
    for p in [0.05f32, 0.1, 0.5, 0.9] {
        let base = Mask { p, seed: 11, salt: 1234, site: 0 };
        let keep = gpu_mask(&base);
        let q = 1.0 - p as f64;
        within(&format!("p={p} kept"), keep.iter().filter(|&&k| k).count(), n, q);
        let pairs = keep.windows(2).filter(|w| w[0] && w[1]).count();
        within(&format!("p={p} neighbours both kept"), pairs, n - 1, q * q);
        let strided = (0..n - 256).filter(|&i| keep[i] && keep[i + 256]).count();
        within(&format!("p={p} a workgroup apart both kept"), strided, n - 256, q * q);
        assert_eq!(gpu_mask(&base), keep, "p={p}: the same mask twice");
        for other in [Mask { seed: 12, ..base }, Mask { salt: 1235, ..base }, Mask { site: 1, ..base }] {
            let k2 = gpu_mask(&other);
            let agree = keep.iter().zip(&k2).filter(|(a, b)| a == b).count();
            within(&format!("p={p} {other:?} agrees with {base:?}"), agree, n, q * q + (1.0 - q) * (1.0 - q));
        }
    }
}

// More than 65535 * 256 elements: the grid folds into y, and the mask index is the
// unfolded element index (the host's `kept(i)`).
#[test]
fn dropout_folds_the_grid() {
    let g = gpu();
    let n = 65535 * 256 + 300;
    let mut rng = Rng::new(73);
    let x = nonzero(&mut rng, n);
    let mask = Mask { p: 0.25, seed: 9, salt: 8, site: 7 };
    let tx = g.upload_f32("x", &x).unwrap();
    let ty = g.upload_f32("y", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &mask, &tx, &ty, n);
    enc.submit();
    let y = block(g.read_f32(&ty)).unwrap();
    let keep: Vec<bool> = (0..n as u32).map(|i| mask.kept(i)).collect();
    if let Some(i) = (0..n).find(|&i| (y[i] != 0.0) != keep[i]) {
        panic!("dropout n={n}: element {i} kept {} on the GPU, {} on the host", y[i] != 0.0, keep[i]);
    }
    check(&format!("dropout n={n}"), &y, &dropout(&f64s(&x), &keep, mask.p as f64), DROPOUT);
}
