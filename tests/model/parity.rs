//! The engine (f32) against transformers (f64).

use webtune::train::{batch, LossMode};

use crate::common::{block, check, gpu, Tol};
use crate::fixture::{Fixture, ARCHS, MODES};

/// Logits of a 2-layer model: each is a sum over C of f32 products after norms and
/// attention; the f32 engine stays within ~1e-6 of the f64 truth relative to the largest
/// logit, so 1e-5 catches any real error (a wrong RoPE angle moves logits by ~1e-2).
const LOGITS: Tol = Tol { name: "LOGITS", abs: 1e-6, rel: 1e-5 };
/// Gradients pass through the whole backward; relative to the largest element of each
/// tensor, f32 round-off stays near 1e-6.
const GRADS: Tol = Tol { name: "GRADS", abs: 1e-7, rel: 2e-5 };
/// A scalar loss of order 1 computed in f32.
const LOSS: f64 = 2e-6;

#[test]
fn logits_match_transformers() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let mut t = fx.trainer(g, LossMode::AllTokens, 8);
        let v = t.model.cfg.vocab;
        for (i, e) in fx.examples.iter().enumerate() {
            // Every position's logits: plan one example with all rows as "loss" rows.
            let mut mb = batch::plan(std::slice::from_ref(e), LossMode::AllTokens, 1).unwrap().remove(0);
            mb.loss_rows = (0..e.ids.len() as u32).collect();
            mb.targets = vec![0; e.ids.len()];
            mb.weights = vec![0.0; e.ids.len()];
            let got = block(t.logits(&mb)).unwrap();
            let (shape, want) = &fx.expected[&format!("logits.{i}")];
            assert_eq!(shape, &vec![e.ids.len(), v]);
            let worst = check(&format!("{arch} logits of example {i}"), &got, want, LOGITS);
            eprintln!("{arch} logits example {i}: worst relative error {worst:.2e}");
        }
    }
}

#[test]
fn losses_match_transformers_in_every_mode() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let mut t = fx.trainer(g, LossMode::PerExample, 2);
        for &mode in MODES {
            let (scores, loss) = block(t.score(&fx.examples, mode)).unwrap();
            let want = fx.loss(mode);
            eprintln!("{arch} {mode}: loss {loss:.9} vs transformers {want:.9} (diff {:.2e})", loss - want);
            assert!((loss - want).abs() <= LOSS * want.abs().max(1.0), "{arch} {mode}: loss {loss} vs {want}");
            if mode == LossMode::AllTokens {
                // Per-position NLLs of every example.
                for (i, s) in scores.iter().enumerate() {
                    let nll: Vec<f64> =
                        fx.json["nll"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
                    assert!((s.mean_nll - mean).abs() <= LOSS * mean.max(1.0), "{arch} example {i} mean nll");
                }
            }
        }
    }
}

#[test]
fn every_gradient_matches_transformers_in_every_mode() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        for &mode in MODES {
            let mut t = fx.trainer(g, mode, 8);
            block(t.accumulate(&fx.examples)).unwrap();
            let grads = block(t.read_grads()).unwrap();
            let mut worst = (0f64, String::new());
            let mut seen = 0;
            for (name, shape, got) in &grads {
                let key = format!("grad.{mode}.{name}");
                let (wshape, want) = fx.expected.get(&key).unwrap_or_else(|| panic!("fixture lacks {key}"));
                assert_eq!(shape, wshape, "{key} shape");
                let e = check(&format!("{arch} {key}"), got, want, GRADS);
                if e > worst.0 {
                    worst = (e, name.clone());
                }
                seen += 1;
            }
            let expected_count = fx.expected.keys().filter(|k| k.starts_with(&format!("grad.{mode}."))).count();
            assert_eq!(seen, expected_count, "{arch}: every fixture gradient must be compared");
            eprintln!("{arch} {mode}: {seen} gradients, worst relative error {:.2e} ({})", worst.0, worst.1);
        }
    }
}

#[test]
fn ten_adamw_steps_follow_transformers() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let mut t = fx.trainer(g, LossMode::PerExample, 8);
        let want: Vec<f64> = fx.json["step_losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(want.len(), 10);
        let mut worst = 0f64;
        for (s, w) in want.iter().enumerate() {
            let got = block(t.step(&fx.examples)).unwrap().loss;
            let e = (got - w).abs() / w.abs().max(1.0);
            worst = worst.max(e);
            // Ten Adam steps amplify f32 round-off a little each step.
            assert!(e <= 2e-5, "{arch} step {s}: loss {got} vs transformers {w}");
        }
        eprintln!("{arch}: 10 AdamW steps, worst relative loss error {worst:.2e}, final {:.6}", want[9]);
    }
}
