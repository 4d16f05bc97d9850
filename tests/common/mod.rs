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

/// The library's SplitMix64: deterministic and identical natively and in wasm.
#[allow(unused_imports)]
pub use webtune::rng::Rng;

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

/// Each loss and every gradient of a training run, as `train_bits` gives them.
pub type RunBits = (Vec<u64>, Vec<(String, Vec<usize>, Vec<f32>)>);

/// 5 AdamW steps on `examples` in micro-batches of `micro_batch` with activation
/// checkpointing, then one more accumulation: each step's loss bits, and every trainable
/// gradient after it (to compare two runs that must agree bit for bit).
pub fn train_bits(
    g: &Gpu,
    model: webtune::model::Model,
    examples: &[webtune::train::Example],
    micro_batch: usize,
) -> RunBits {
    use webtune::train::{TrainConfig, Trainer};
    let tc = TrainConfig { micro_batch, recompute: true, ..Default::default() };
    let mut t = Trainer::new(g, model, tc).unwrap();
    let losses = (0..5).map(|_| block(t.step(examples)).unwrap().loss.to_bits()).collect();
    block(t.accumulate(examples)).unwrap();
    (losses, block(t.read_grads()).unwrap())
}

/// Two runs' losses and gradients are equal bit for bit (`what` names the first run).
pub fn assert_same_bits(what: &str, (loss_a, grads_a): &RunBits, (loss_b, grads_b): &RunBits) {
    assert_eq!(loss_a, loss_b, "{what}: the losses differ");
    assert_eq!(grads_a.len(), grads_b.len(), "{what}: not the same gradients");
    for ((name, _, a), (_, _, b)) in grads_a.iter().zip(grads_b) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: {name} not bit-identical");
    }
}
