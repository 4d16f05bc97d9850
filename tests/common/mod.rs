//! Shared by the native GPU test binaries: one device for the whole binary (two cores are
//! all CI has), a deterministic RNG, and comparison with named tolerances.
#![allow(dead_code)]

use std::sync::OnceLock;

use webtune::gpu::Gpu;

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        pollster::block_on(Gpu::new()).expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
    })
}

pub fn block<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// SplitMix64: small, deterministic, and independent of any crate's version.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// `n` values ~ N(0, scale^2), rounded to f32 so the f64 reference sees the exact
    /// inputs the GPU sees.
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A named tolerance: |got - want| <= abs + rel * max|want| must hold for every element
/// (errors of f32 sums scale with the magnitude of the tensor, not of each element).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub name: &'static str,
    pub abs: f64,
    pub rel: f64,
}

/// Compare a GPU result with the f64 reference; on failure print the worst element.
/// Returns the worst error relative to max|want|, for reporting.
pub fn check(what: &str, got: &[f32], want: &[f64], tol: Tol) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    let bound = tol.abs + tol.rel * scale;
    let mut worst = (0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_finite() { (g as f64 - w).abs() } else { f64::INFINITY };
        if e > worst.1 || (i == 0 && e.is_nan()) {
            worst = (i, e);
        }
    }
    let (i, e) = worst;
    assert!(
        e <= bound,
        "{what}: worst element [{i}] got {} want {} (|err| {e:.3e} > bound {bound:.3e} = {} abs {:.1e} + rel {:.1e} x max|want| {scale:.3e})",
        got[i], want[i], tol.name, tol.abs, tol.rel
    );
    if scale > 0.0 {
        e / scale
    } else {
        e
    }
}
