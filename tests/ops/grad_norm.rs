use webtune::gpu::{Encoder, Gpu, Tensor};
use webtune::ops::grad_norm::{grad_norm, partials_len};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::grad_norm::global_norm;

/// f32 sums of squares: fma over 16 elements, then trees of 256, ~log2(len) roundings of
/// the running sum, each 2^-24 relative (all terms positive, so no cancellation); the
/// sqrt halves it. 1e-6 relative is ~8x that at 100k elements.
const GRAD_NORM: Tol = Tol { name: "GRAD_NORM", abs: 0.0, rel: 1e-6 };

/// Lengths straddling a workgroup (256) and a workgroup's chunk (4096).
const LENS: &[usize] = &[1, 255, 257, 4096, 4097, 100003];

/// Gradients as views into one arena, as the trainer keeps them: each view starts on a
/// 256-byte boundary (64 elements).
fn arena(g: &Gpu, data: &[Vec<f32>]) -> Vec<Tensor> {
    let starts: Vec<usize> =
        data.iter().scan(0, |at, d| Some(std::mem::replace(at, *at + d.len().next_multiple_of(64)))).collect();
    let total = starts.last().unwrap() + data.last().unwrap().len();
    let mut flat = vec![0f32; total];
    for (d, &s) in data.iter().zip(&starts) {
        flat[s..s + d.len()].copy_from_slice(d);
    }
    let t = g.upload_f32("grads", &flat).unwrap();
    data.iter().zip(&starts).map(|(d, &s)| t.view(s, d.len())).collect()
}

/// stats[0] and stats[1] for these gradients.
fn norm(data: &[Vec<f32>]) -> (f32, f32) {
    let g = gpu();
    let grads = arena(g, data);
    let partials = g.zeros("partials", partials_len(&data.iter().map(|d| d.len()).collect::<Vec<_>>())).unwrap();
    let stats = g.upload_f32("stats", &[-1.0; 4]).unwrap();
    let mut enc = Encoder::new(g);
    grad_norm(&mut enc, &grads, &partials, &stats);
    enc.submit();
    let s = block(g.read_f32(&stats)).unwrap();
    assert_eq!(&s[2..], &[-1.0, -1.0], "grad_norm wrote past stats[1]");
    (s[0], s[1])
}

#[test]
fn grad_norm_matches_reference() {
    let mut rng = Rng::new(30);
    let data: Vec<Vec<f32>> = LENS.iter().map(|&l| rng.vec(l, 0.01)).collect();
    let d64: Vec<Vec<f64>> = data.iter().map(|d| f64s(d)).collect();
    let want = global_norm(&d64.iter().map(|d| d.as_slice()).collect::<Vec<_>>());
    let (n, sq) = norm(&data);
    let e = check("grad_norm", &[n], &[want], GRAD_NORM);
    check("grad_norm sum of squares", &[sq], &[want * want], Tol { rel: 2.0 * GRAD_NORM.rel, ..GRAD_NORM });
    // Each length alone, so an indexing error in one tensor cannot hide behind the others.
    for d in &d64 {
        let (n1, _) = norm(&[d.iter().map(|&x| x as f32).collect()]);
        check(&format!("grad_norm len {}", d.len()), &[n1], &[global_norm(&[d])], GRAD_NORM);
    }
    assert_eq!(norm(&[vec![0.0; 300]]).0, 0.0);
    println!("grad_norm worst relative error {e:.2e}");
}

#[test]
fn grad_norm_is_deterministic() {
    let mut rng = Rng::new(31);
    let data: Vec<Vec<f32>> = LENS.iter().map(|&l| rng.vec(l, 1.0)).collect();
    let a = norm(&data);
    let b = norm(&data);
    assert_eq!((a.0.to_bits(), a.1.to_bits()), (b.0.to_bits(), b.1.to_bits()));
}

#[test]
fn grad_norm_non_finite_is_never_dropped() {
    let mut rng = Rng::new(32);
    let base: Vec<Vec<f32>> = LENS.iter().map(|&l| rng.vec(l, 1.0)).collect();
    // (tensor, element, value, expect NaN rather than Inf)
    let cases = [
        (0, 0, f32::NAN, true),
        (5, 100002, f32::NAN, true),
        (3, 4095, f32::INFINITY, false),
        (4, 4096, f32::NEG_INFINITY, false),
        (2, 128, -f32::NAN, true),
        // Finite, but its square is not: the sum of squares overflows.
        (5, 777, 1e30, false),
    ];
    for (t, i, x, nan) in cases {
        let mut data = base.clone();
        data[t][i] = x;
        let (n, _) = norm(&data);
        assert!(!n.is_finite(), "grad_norm with {x} at tensor {t} [{i}] gave a finite norm {n}");
        assert_eq!(n.is_nan(), nan, "grad_norm with {x} at tensor {t} [{i}] gave {n}");
    }
}
