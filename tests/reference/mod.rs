//! Independent float64 CPU references for every op, forward and backward, written from the
//! math (not from the WGSL), plus central finite differences to check each backward.
#![allow(dead_code)]

pub mod adamw;
pub mod attention;
pub mod bias;
pub mod copy2d;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod fill;
pub mod gather;
pub mod gelu;
pub mod grad_norm;
pub mod layernorm;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod softcap;
pub mod swiglu;

/// Central finite differences of a scalar function `f` at `x`, along every coordinate.
pub fn numeric_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let fp = f(&xp);
            xp[i] = x0 - h;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Assert an analytic f64 gradient equals the numeric one (both in f64, so the bound is
/// the O(h^2) truncation plus rounding, far below any f32 tolerance).
pub fn assert_grad(what: &str, analytic: &[f64], numeric: &[f64]) {
    let scale = numeric.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a - n).abs() <= 1e-6 * scale, "{what}: reference gradient [{i}] analytic {a} vs numeric {n}");
    }
}

/// sum(w * y): a random projection turns a tensor output into a scalar loss whose
/// gradient with respect to y is exactly w.
pub fn dot(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}
