//! LoRA: the engine against PyTorch + PEFT in float64 (tests/fixtures/make_lora_fixtures.py),
//! PEFT's init reproducing the base model, gradient accumulation, the frozen base, PEFT
//! adapter import/export, the merged model, dropout, and the memory estimate.
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "model/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::path::PathBuf;

use common::{block, check, f64s, gpu, Tol};
use fixture::{Fixture, ARCHS, MODES};
use webtune::export::merged::export_merged;
use webtune::export::peft::{export_adapter, import_adapter, parse_adapter_config, AdapterFiles};
use webtune::gpu::Gpu;
use webtune::model::{LoraConfig, Model};
use webtune::train::{batch, AdamW, LossMode, TrainConfig, Trainer};
use webtune::Error;

/// Logits of the 2-layer models with an adapter: as tests/model/parity.rs (f32 engine vs
/// f64 truth, relative to the largest logit).
const LOGITS: Tol = Tol { name: "LOGITS", abs: 1e-6, rel: 1e-5 };
/// dA and dB, relative to the largest element of each tensor.
const GRADS: Tol = Tol { name: "GRADS", abs: 1e-7, rel: 2e-5 };
/// A scalar loss of order 1, relative.
const LOSS: f64 = 2e-6;
/// Five AdamW steps on the adapters, relative loss error.
const STEPS: f64 = 2e-5;
/// Micro-batches vs one batch: only f32 re-association differs.
const ACCUM: Tol = Tol { name: "ACCUM", abs: 1e-7, rel: 2e-6 };
/// Merged weights (W + s B A rounded once) vs the adapter computed on the side.
const MERGED: Tol = Tol { name: "MERGED", abs: 1e-6, rel: 1e-5 };

fn lora_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora").join(arch)
}

fn peft_files(arch: &str) -> AdapterFiles {
    let d = lora_dir(arch);
    AdapterFiles {
        config_json: std::fs::read_to_string(d.join("adapter_config.json")).unwrap(),
        safetensors: std::fs::read(d.join("adapter_model.safetensors")).unwrap(),
    }
}

/// The PEFT fixture: its expectations, and the base fixture's examples.
fn lora_fixture(arch: &str) -> Fixture {
    let mut fx = Fixture::load(arch);
    let d = lora_dir(arch);
    fx.json = serde_json::from_str(&std::fs::read_to_string(d.join("fixture.json")).unwrap()).unwrap();
    let bytes = std::fs::read(d.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    fx.expected = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect();
    fx
}

fn lora_model(g: &Gpu, arch: &str, cfg: &LoraConfig) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(arch);
    webtune::load::model_from_hf_dir_lora(g, &dir, Some(cfg)).unwrap()
}

/// The base model with PEFT's saved adapter.
fn peft_model(g: &Gpu, arch: &str) -> Model {
    let files = peft_files(arch);
    let m = lora_model(g, arch, &parse_adapter_config(&files.config_json).unwrap());
    import_adapter(g, &m, &files).unwrap();
    m
}

fn trainer<'g>(g: &'g Gpu, fx: &Fixture, model: Model, loss: LossMode, micro_batch: usize) -> Trainer<'g> {
    let a = &fx.json["adamw"];
    let f = |k: &str| a[k].as_f64().unwrap() as f32;
    let adamw = AdamW {
        lr: f("lr"),
        beta1: f("beta1"),
        beta2: f("beta2"),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        max_grad_norm: f("max_grad_norm"),
    };
    Trainer::new(g, model, TrainConfig { loss, micro_batch, adamw, ..Default::default() }).unwrap()
}

/// Every position's logits of example `e`.
fn all_logits(t: &mut Trainer, e: &webtune::train::Example) -> Vec<f32> {
    let mut mb = batch::plan(std::slice::from_ref(e), LossMode::AllTokens, 1).unwrap().remove(0);
    mb.loss_rows = (0..e.ids.len() as u32).collect();
    mb.targets = vec![0; e.ids.len()];
    mb.weights = vec![0.0; e.ids.len()];
    block(t.logits(&mb)).unwrap()
}

#[test]
fn peft_adapter_logits_losses_and_gradients_match() {
    let g = gpu();
    for arch in ARCHS {
        let fx = lora_fixture(arch);
        let mut t = trainer(g, &fx, peft_model(g, arch), LossMode::PerExample, 8);
        let mut worst = 0f64;
        for (i, e) in fx.examples.iter().enumerate() {
            let got = all_logits(&mut t, e);
            worst =
                worst.max(check(&format!("{arch} logits {i}"), &got, &fx.expected[&format!("logits.{i}")].1, LOGITS));
        }
        eprintln!("{arch}: LoRA logits worst relative error {worst:.2e}");
        for &mode in MODES {
            let want = fx.json["losses"][mode.to_string()].as_f64().unwrap();
            let (_, loss) = block(t.score(&fx.examples, mode)).unwrap();
            let e = (loss - want).abs() / want.abs().max(1.0);
            assert!(e <= LOSS, "{arch} {mode}: loss {loss} vs PEFT {want}");
            t.cfg.loss = mode;
            let l2 = block(t.accumulate(&fx.examples)).unwrap();
            assert_eq!(l2, loss, "{arch} {mode}: training and scoring losses differ");
            let grads = block(t.read_grads()).unwrap();
            let mut worst = (0f64, String::new());
            for (name, shape, got) in &grads {
                let key = format!("grad.{mode}.{name}");
                let (ws, want) = fx.expected.get(&key).unwrap_or_else(|| panic!("fixture lacks {key}"));
                assert_eq!(shape, ws, "{key}");
                let e = check(&format!("{arch} {key}"), got, want, GRADS);
                if e > worst.0 {
                    worst = (e, name.clone());
                }
            }
            let n = fx.expected.keys().filter(|k| k.starts_with(&format!("grad.{mode}."))).count();
            assert_eq!(grads.len(), n, "{arch}: every adapter gradient, and only those");
            eprintln!(
                "{arch} {mode}: loss error {e:.2e}; {n} adapter gradients, worst relative error {:.2e} ({})",
                worst.0, worst.1
            );
        }
    }
}

#[test]
fn five_adamw_steps_on_the_adapter_follow_peft() {
    let g = gpu();
    for arch in ARCHS {
        let fx = lora_fixture(arch);
        let mut t = trainer(g, &fx, peft_model(g, arch), LossMode::PerExample, 8);
        let want: Vec<f64> = fx.json["step_losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(want.len(), 5);
        let mut worst = 0f64;
        for (s, w) in want.iter().enumerate() {
            let got = block(t.step(&fx.examples)).unwrap().loss;
            let e = (got - w).abs() / w.abs().max(1.0);
            worst = worst.max(e);
            assert!(e <= STEPS, "{arch} step {s}: loss {got} vs PEFT {w}");
        }
        eprintln!("{arch}: 5 AdamW steps on the adapter, worst relative loss error {worst:.2e}");
    }
}

fn all_linear(arch: &str, rank: usize) -> LoraConfig {
    let cfg = webtune::model::ModelConfig::from_hf_json(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(arch).join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    LoraConfig { seed: 11, ..LoraConfig::new(rank, 16.0, LoraConfig::all_linear(cfg.arch)) }
}

#[test]
fn peft_init_reproduces_the_base_model_exactly() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let mut base = fx.trainer(g, LossMode::AllTokens, 8);
        let mut lora = trainer(g, &fx, lora_model(g, arch, &all_linear(arch, 8)), LossMode::AllTokens, 8);
        // A is kaiming-uniform (non-zero, within 1/sqrt(in)), B zero.
        for (_, a, b) in lora.model.lora_params() {
            let av = block(lora.model.params.read(g, a)).unwrap();
            let bound = 1.0 / (lora.model.params.specs[a].shape[1] as f32).sqrt();
            assert!(av.iter().all(|x| x.abs() <= bound) && av.iter().any(|&x| x != 0.0));
            assert!(block(lora.model.params.read(g, b)).unwrap().iter().all(|&x| x == 0.0));
        }
        for e in &fx.examples {
            let (want, got) = (all_logits(&mut base, e), all_logits(&mut lora, e));
            assert!(
                want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{arch}: step-0 LoRA logits differ from the base"
            );
        }
    }
}

#[test]
fn accumulation_and_every_mode_give_one_batch_gradients() {
    let g = gpu();
    for arch in ARCHS {
        let fx = lora_fixture(arch);
        let mut ex = fx.examples.clone();
        ex.extend(fx.examples.iter().rev().cloned());
        for &mode in MODES {
            let mut whole = trainer(g, &fx, peft_model(g, arch), mode, 6);
            let l_whole = block(whole.accumulate(&ex)).unwrap();
            let g_whole = block(whole.read_grads()).unwrap();
            for micro in [1, 2, 4] {
                let mut t = trainer(g, &fx, peft_model(g, arch), mode, micro);
                let l = block(t.accumulate(&ex)).unwrap();
                assert!((l - l_whole).abs() <= 1e-6 * l_whole.abs(), "{arch} {mode} micro {micro}: loss");
                let gm = block(t.read_grads()).unwrap();
                assert_eq!(gm.len(), g_whole.len());
                let mut worst = 0f64;
                for ((name, _, a), (_, _, b)) in gm.iter().zip(&g_whole) {
                    worst = worst.max(check(&format!("{arch} {mode} micro {micro} {name}"), a, &f64s(b), ACCUM));
                }
                eprintln!("{arch} {mode} micro-batch {micro}: worst relative adapter-gradient difference {worst:.2e}");
            }
        }
    }
}

#[test]
fn the_base_stays_bit_identical_and_has_no_gradient_or_moments() {
    let g = gpu();
    for arch in ARCHS {
        let fx = lora_fixture(arch);
        let mut t = trainer(g, &fx, peft_model(g, arch), LossMode::PerExample, 2);
        let p = &t.model.params;
        let lora_ids: Vec<usize> = t.model.lora_params().iter().flat_map(|(_, a, b)| [*a, *b]).collect();
        for (i, s) in p.specs.iter().enumerate() {
            let is_lora = lora_ids.contains(&i);
            assert_eq!(s.trainable, is_lora, "{}", s.name);
            assert_eq!(p.grad(i).is_some(), is_lora, "{}", s.name);
            assert_eq!(p.arenas[p.slots[i].arena].trainable, is_lora, "{}", s.name);
        }
        for a in p.arenas.iter().filter(|a| !a.trainable) {
            assert!(a.grads.is_none() && a.m.is_none() && a.v.is_none());
        }
        let lora_numel: usize = lora_ids.iter().map(|&i| p.specs[i].numel()).sum();
        assert_eq!(p.num_trainable(), lora_numel);
        let snap = |t: &Trainer, lora: bool| -> Vec<Vec<u32>> {
            let p = &t.model.params;
            (0..p.specs.len())
                .filter(|i| lora_ids.contains(i) == lora)
                .map(|i| block(g.read_u32(&p.weight(i))).unwrap())
                .collect()
        };
        let (base0, lora0) = (snap(&t, false), snap(&t, true));
        for _ in 0..3 {
            block(t.step(&fx.examples)).unwrap();
        }
        assert!(base0 == snap(&t, false), "{arch}: a frozen base weight changed");
        assert!(lora0.iter().zip(snap(&t, true)).all(|(a, b)| *a != b), "{arch}: every adapter tensor trains");
    }
}

#[test]
fn an_exported_adapter_reimports_bit_exactly_and_looks_like_peft_s() {
    let g = gpu();
    for arch in ARCHS {
        let fx = lora_fixture(arch);
        let mut t = trainer(g, &fx, peft_model(g, arch), LossMode::PerExample, 8);
        block(t.step(&fx.examples)).unwrap();
        let files = block(export_adapter(g, &t.model, &format!("tests/fixtures/{arch}"))).unwrap();
        // Against the adapter PEFT saved: the same config fields, keys, shapes and dtype.
        let ours: serde_json::Value = serde_json::from_str(&files.config_json).unwrap();
        let peft: serde_json::Value = serde_json::from_str(&peft_files(arch).config_json).unwrap();
        for k in [
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "use_rslora",
            "fan_in_fan_out",
            "bias",
            "base_model_name_or_path",
            "use_dora",
            "modules_to_save",
        ] {
            let (a, b) = (&ours[k], &peft[k]);
            // PEFT keeps target_modules as a set: compare them as sets.
            let set = |v: &serde_json::Value| {
                v.as_array().map(|a| a.iter().map(|x| x.to_string()).collect::<std::collections::BTreeSet<_>>())
            };
            let same =
                a == b || a.as_f64().is_some() && a.as_f64() == b.as_f64() || set(a).is_some() && set(a) == set(b);
            assert!(same, "{arch}: adapter_config.json `{k}`: ours {a} vs PEFT {b}");
        }
        let pf = peft_files(arch);
        let st_peft = safetensors::SafeTensors::deserialize(&pf.safetensors).unwrap();
        let st_ours = safetensors::SafeTensors::deserialize(&files.safetensors).unwrap();
        let mut names_p: Vec<_> = st_peft.names();
        let mut names_o: Vec<_> = st_ours.names();
        names_p.sort();
        names_o.sort();
        assert_eq!(names_o, names_p, "{arch}: adapter keys");
        for n in names_o {
            let (a, b) = (st_ours.tensor(n).unwrap(), st_peft.tensor(n).unwrap());
            assert_eq!((a.shape(), a.dtype()), (b.shape(), b.dtype()), "{arch} {n}");
        }
        // Re-import into a fresh model: every tensor bit for bit.
        let fresh = lora_model(g, arch, &parse_adapter_config(&files.config_json).unwrap());
        import_adapter(g, &fresh, &files).unwrap();
        for ((_, a1, b1), (_, a2, b2)) in t.model.lora_params().iter().zip(fresh.lora_params()) {
            for (x, y) in [(*a1, a2), (*b1, b2)] {
                let u = block(g.read_u32(&t.model.params.weight(x))).unwrap();
                assert_eq!(u, block(g.read_u32(&fresh.params.weight(y))).unwrap());
            }
        }
    }
}

#[test]
fn a_bad_adapter_is_a_named_error() {
    let g = gpu();
    let files = peft_files("llama");
    let cfg = parse_adapter_config(&files.config_json).unwrap();
    let m = lora_model(g, "llama", &cfg);
    let err = |f: &AdapterFiles| -> String {
        let e = match parse_adapter_config(&f.config_json) {
            Err(e) => e,
            Ok(_) => import_adapter(g, &m, f).unwrap_err(),
        };
        assert!(matches!(e, Error::Adapter(_)), "{e}");
        e.to_string()
    };
    // Config: DoRA, a regex target, a per-layer rank, another method.
    for (from, to, word) in [
        ("\"use_dora\": false", "\"use_dora\": true", "use_dora"),
        ("\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 8}", "rank_pattern"),
        ("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", "IA3"),
        ("\"r\": 4", "\"r\": 8", "r=8"),
    ] {
        assert!(files.config_json.contains(from), "{from}");
        let f = AdapterFiles { config_json: files.config_json.replace(from, to), ..files.clone() };
        let e = err(&f);
        assert!(e.contains(word), "{e}");
    }
    let mut v: serde_json::Value = serde_json::from_str(&files.config_json).unwrap();
    v["target_modules"] = serde_json::json!(".*q_proj");
    let e = err(&AdapterFiles { config_json: v.to_string(), ..files.clone() });
    assert!(e.contains("regular expression"), "{e}");
    // Tensors: one missing, one extra, one of the wrong shape.
    let st = safetensors::SafeTensors::deserialize(&files.safetensors).unwrap();
    let all: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), bytemuck::pod_collect_to_vec(v.data())))
        .collect();
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    let write = |t: &[(String, Vec<usize>, Vec<f32>)]| AdapterFiles {
        config_json: files.config_json.clone(),
        safetensors: webtune::export::safetensors_f32(t).unwrap(),
    };
    let missing: Vec<_> = all.iter().filter(|t| t.0 != key).cloned().collect();
    let e = err(&write(&missing));
    assert!(e.contains(key) && e.contains("lacks"), "{e}");
    let mut extra = all.clone();
    extra.push(("base_model.model.lm_head.lora_A.weight".into(), vec![4, 48], vec![0.0; 192]));
    let e = err(&write(&extra));
    assert!(e.contains("lm_head.lora_A"), "{e}");
    let mut wrong = all.clone();
    let w = wrong.iter_mut().find(|t| t.0 == key).unwrap();
    w.1 = vec![w.1[1], w.1[0]];
    let e = err(&write(&wrong));
    assert!(e.contains(key) && e.contains("shape"), "{e}");
    // A target that matches nothing in the model.
    let e = lora_model_err(g, LoraConfig::new(4, 8.0, &["q_proj", "c_attn"]));
    assert!(e.contains("c_attn"), "{e}");
    // And the untouched adapter still loads.
    import_adapter(g, &m, &files).unwrap();
}

fn lora_model_err(g: &Gpu, cfg: LoraConfig) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    match webtune::load::model_from_hf_dir_lora(g, &dir, Some(&cfg)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted a target that matches nothing"),
    }
}

#[test]
fn the_merged_model_gives_the_lora_model_s_logits() {
    let g = gpu();
    for arch in ARCHS {
        let fx = lora_fixture(arch);
        let mut t = trainer(g, &fx, peft_model(g, arch), LossMode::PerExample, 8);
        block(t.step(&fx.examples)).unwrap();
        let config = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
        let files = block(export_merged(g, &t.model, &config)).unwrap();
        let merged =
            webtune::load::model_from_hf_bytes(g, &files.config_json, &[("model.safetensors", &files.safetensors)])
                .unwrap();
        let base_names: Vec<String> =
            Fixture::load(arch).model(g).params.specs.iter().map(|s| s.name.clone()).collect();
        let merged_names: Vec<String> = merged.params.specs.iter().map(|s| s.name.clone()).collect();
        assert_eq!(merged_names, base_names);
        let mut m = trainer(g, &fx, merged, LossMode::PerExample, 8);
        let mut worst = 0f64;
        for (i, e) in fx.examples.iter().enumerate() {
            let want = f64s(&all_logits(&mut t, e));
            worst = worst.max(check(&format!("{arch} merged logits {i}"), &all_logits(&mut m, e), &want, MERGED));
        }
        eprintln!("{arch}: merged model vs LoRA model, worst relative logit difference {worst:.2e}");
    }
}

#[test]
fn dropout_masks_match_the_host_and_stay_out_of_scoring() {
    use webtune::gpu::Encoder;
    use webtune::ops::dropout::{self, Mask};
    let g = gpu();
    let n = 10_000;
    let mask = Mask { p: 0.3, seed: 5, salt: 77, site: 3 };
    let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 1e-3).collect();
    let xt = g.upload_f32("x", &x).unwrap();
    let y = g.zeros("y", n).unwrap();
    let dx = g.upload_f32("dx", &vec![1.0; n]).unwrap();
    let mut enc = Encoder::new(g);
    dropout::forward(&mut enc, &mask, &xt, &y, n);
    dropout::backward(&mut enc, &mask, &xt, &dx, n, true);
    enc.submit();
    let (y, dx) = (block(g.read_f32(&y)).unwrap(), block(g.read_f32(&dx)).unwrap());
    let kept = (0..n).filter(|&i| mask.kept(i as u32)).count();
    assert!((kept as f64 / n as f64 - 0.7).abs() < 0.02, "keep rate {kept}/{n}");
    for i in 0..n {
        let k = mask.kept(i as u32);
        let want = if k { x[i] * (1.0 / (1.0 - 0.3f32)) } else { 0.0 };
        assert_eq!(y[i], want, "element {i}");
        assert_eq!(dx[i], want + 1.0, "element {i}");
    }
    // A model with dropout: scoring runs no dropout (the base's losses at init), and two
    // runs of the same training step give the same gradients (the mask is a function of
    // seed, step, micro-batch and layer).
    let fx = Fixture::load("gpt2");
    let cfg = LoraConfig { dropout: 0.2, ..all_linear("gpt2", 4) };
    let mut t = trainer(g, &fx, lora_model(g, "gpt2", &cfg), LossMode::PerExample, 2);
    let mut base = fx.trainer(g, LossMode::PerExample, 2);
    assert_eq!(
        block(t.score(&fx.examples, LossMode::PerExample)).unwrap().1,
        block(base.score(&fx.examples, LossMode::PerExample)).unwrap().1
    );
    block(t.step(&fx.examples)).unwrap(); // B != 0 from here on
    let l1 = block(t.accumulate(&fx.examples)).unwrap();
    let g1 = block(t.read_grads()).unwrap();
    let l2 = block(t.accumulate(&fx.examples)).unwrap();
    assert_eq!(l1, l2);
    assert!(g1 == block(t.read_grads()).unwrap());
    let (_, l_eval) = block(t.score(&fx.examples, LossMode::PerExample)).unwrap();
    assert_ne!(l1, l_eval, "dropout must change the training loss");
    for _ in 0..5 {
        block(t.step(&fx.examples)).unwrap();
    }
    let (_, l_after) = block(t.score(&fx.examples, LossMode::PerExample)).unwrap();
    assert!(l_after < l_eval, "training with dropout lowers the loss: {l_eval} -> {l_after}");
}

#[test]
fn lora_on_smollm2_135m_fits_under_a_gibibyte_in_micro_batches() {
    use webtune::model::memory::estimate;
    let cfg = webtune::model::presets::preset("smollm2-135m").unwrap();
    let lora = LoraConfig::new(8, 16.0, LoraConfig::all_linear(cfg.arch));
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    for (b, micro) in [(4, 4), (4, 1)] {
        let full = estimate(&cfg, None, micro, 256).unwrap();
        let e = estimate(&cfg, Some(&lora), micro, 256).unwrap();
        eprintln!("smollm2-135m B={b} micro-batch {micro} T=256: LoRA r=8 all-linear {e}; full fine-tuning {full}");
        assert!(e.total() < full.total());
        assert_eq!(e.grads_and_moments, 3 * e.trainable_weights);
        // Activation checkpointing and the chunked LM head: well under a GiB even with the
        // four sequences in one micro-batch.
        assert!(e.total() < 800 << 20, "{:.0} MiB", mib(e.total()));
    }
    // The estimate is what the engine allocates: parameters (arena layout) and workspace.
    let g = gpu();
    let lora = all_linear("llama", 4);
    let m = lora_model(g, "llama", &lora);
    let e = estimate(&m.cfg, Some(&lora), 2, 9).unwrap();
    assert_eq!(e.frozen_weights + e.trainable_weights + e.grads_and_moments, m.params.gpu_bytes());
    let ws = m.workspace(g, 18, 18).unwrap();
    let lora_ws: u64 = ws.lora.as_ref().map_or(0, |l| l.u.iter().chain([&l.g]).chain(&l.xd).map(|t| t.bytes()).sum());
    assert_eq!(lora_ws, e.lora_activations);
}

/// LoRA's path of the issue: activation checkpointing and the chunked LM head against the
/// old layout (every block's activations saved, one head chunk). The base is frozen, so no
/// gradient is summed over the head's rows: the loss and every adapter gradient must be the
/// same bits, with dropout too (its masks depend only on the salt and the site, so the
/// re-run forward drops the same inputs).
#[test]
fn recompute_and_chunked_head_give_bit_identical_adapter_gradients() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        // 300 loss rows under all-tokens: five chunks of 64.
        let ex: Vec<webtune::train::Example> = (0..12).flat_map(|_| fx.examples.iter().cloned()).collect();
        for dropout in [0.0, 0.1] {
            let cfg = LoraConfig { dropout, ..all_linear(arch, 4) };
            let run = |recompute: bool, head_chunk: usize| {
                let mut t = trainer(g, &fx, lora_model(g, arch, &cfg), LossMode::AllTokens, 16);
                t.cfg.recompute = recompute;
                t.cfg.head_chunk = head_chunk;
                block(t.step(&fx.examples)).unwrap(); // B != 0 from here on
                let l = block(t.accumulate(&ex)).unwrap();
                (l, block(t.read_grads()).unwrap())
            };
            let (l_old, g_old) = run(false, 1 << 12);
            let (l_new, g_new) = run(true, 64);
            assert_eq!(l_new.to_bits(), l_old.to_bits(), "{arch} dropout {dropout}: loss {l_new} vs {l_old}");
            assert_eq!(g_new.len(), g_old.len());
            for ((name, _, a), (_, _, b)) in g_new.iter().zip(&g_old) {
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{arch} dropout {dropout} {name}: not bit-identical"
                );
            }
        }
    }
}

/// The workspace estimate is exactly what the GPU allocates: every layout, with and without
/// adapters and dropout, on the three architectures; and `memory::estimate`'s activations
/// are training's workspace for the micro-batch with every row carrying loss.
/// The bytes of training's workspace (`WorkspaceOpts::default()`: recompute, one head
/// chunk) for `rows` tokens that all carry loss, counted by hand from the architecture
/// (not through `Workspace::bytes`, which the estimate itself calls). `rows` must fit one
/// head chunk (256), so every loss row is in it.
fn hand_count(cfg: &webtune::model::ModelConfig, lora: Option<&LoraConfig>, rows: usize) -> u64 {
    use webtune::model::Arch;
    assert!(rows <= 256, "one head chunk");
    // A buffer of n f32: at least one element, rounded up to 16 bytes.
    let b = |n: usize| (4 * n.max(1) as u64).div_ceil(16) * 16;
    let (r, c, f, v, h) = (rows, cfg.hidden, cfg.ffn, cfg.vocab, cfg.heads);
    let (q, kv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let gpt2 = cfg.arch == Arch::Gpt2;
    // The residual stream entering each block and leaving the last.
    let stream = (cfg.layers as u64 + 1) * b(r * c);
    // One block's saved activations (shared by all blocks under recompute).
    let norms = if gpt2 {
        // Two LayerNorms: output, mean and rstd per row.
        2 * (b(r * c) + b(r) + b(r))
    } else {
        // Two RMSNorms: output and rstd per row (the unused mean is one element).
        2 * (b(r * c) + b(1) + b(r))
    };
    let attention = if gpt2 { b(r * 3 * c) } else { 0 } // fused qkv projection
        + 2 * b(r * q) + 2 * b(r * kv) // q, o; k, v
        + b(r * h) // log-sum-exp per row and head
        + b(r * c); // the stream between attention and MLP
    let mlp = if gpt2 { 2 * b(r * f) } else { 3 * b(r * f) }; // fc (, up), activation
                                                              // Qwen3's per-head q/k norms: their inputs (q_proj, k_proj outputs) and 1/rms per head row.
    let qk_norm = if cfg.qk_norm { b(r * q) + b(r * kv) + b(r * h) + b(r * cfg.kv_heads) } else { 0 };
    // Gemma 3's post-norms: o_proj's and down_proj's outputs and their 1/rms per row.
    let gemma = cfg.arch == Arch::Gemma3;
    let post = if gemma { 2 * (b(r * c) + b(r)) } else { 0 };
    let block = norms + attention + mlp + qk_norm + post;
    // The backward's scratch, one set.
    let grads = 2 * b(r * c) // dres, dln
        + 2 * b(r * q) + 2 * b(r * kv) // dq, d_o; dk, dv
        + if gpt2 { b(r * 3 * c) } else { 0 }
        + 3 * b(r * f) // dh1, dh2, dact
        + b(r * h) // delta
        + if cfg.qk_norm { b(r * q) + b(r * kv) } else { 0 } // dq_raw, dk_raw (before the q/k norms)
        + if gemma { b(r * c) } else { 0 } // dpost: a post-normed sublayer's output gradient
        // Partial sums of the row reductions: chunks of 32 rows by the widest bias or norm
        // (F, 3C, Q, KV or C), the embedding's segments of 64 rows (2 r / 64 rows of C), or
        // LayerNorm's dw and db partials (the first rounded up to 64 elements), or the split
        // attention backward's dK and dV partials (max(H/Hk, 4) of each, rows by KV).
        + b((r.div_ceil(32) * [c, f, q, kv, if gpt2 { 3 * c } else { 0 }].into_iter().max().unwrap())
            .max((2 * r).div_ceil(64) * c)
            .max(if gpt2 { (r.div_ceil(32) * c).next_multiple_of(64) + r.div_ceil(32) * c } else { 0 })
            .max(2 * (h / cfg.kv_heads).max(4) * r * kv));
    // The head: gathered and normed hidden states and their gradients, final-norm
    // statistics, logits and per-row loss.
    let head = 4 * b(r * c) + 2 * b(r) + b(r * v) + b(r)
        // Gemma 3's soft-capped head keeps the logits before the cap too.
        + if cfg.gemma.as_ref().is_some_and(|g| g.final_softcap.is_some()) { b(r * v) } else { 0 };
    let adapters = lora.map_or(0, |l| {
        let (per_layer, max_in) = if gpt2 {
            (4, c.max(f)) // c_attn, attn.c_proj, c_fc, mlp.c_proj (fan-in f)
        } else {
            (7, c.max(q).max(f)) // q, k, v, o (fan-in q), gate, up, down (fan-in f)
        };
        let sites = per_layer * cfg.layers as u64;
        (sites + 1) * b(r * l.rank) + if l.dropout > 0.0 { b(r * max_in) } else { 0 }
    });
    stream + block + grads + head + adapters
}

#[test]
fn the_workspace_estimate_is_exactly_what_is_allocated() {
    use webtune::model::memory::estimate;
    use webtune::model::{Workspace, WorkspaceOpts};
    let g = gpu();
    let layouts = [
        WorkspaceOpts::default(),
        WorkspaceOpts::logits(),
        WorkspaceOpts { recompute: false, ..Default::default() },
        WorkspaceOpts { head_chunk: 64, ..Default::default() },
    ];
    for arch in ARCHS {
        for dropout in [None, Some(0.0), Some(0.1)] {
            let lora = dropout.map(|d| LoraConfig { dropout: d, ..all_linear(arch, 4) });
            let m = match &lora {
                Some(l) => lora_model(g, arch, l),
                None => Fixture::load(arch).model(g),
            };
            let shape = m.lora_shape();
            let products = webtune::model::lora::row_products(&m.params.specs, &m.tree);
            let linears = if *arch == "gpt2" { 4 } else { 7 } * m.cfg.layers;
            // Full fine-tuning: each layer's dW; LoRA (the base frozen): each adapter's dA and dB.
            assert_eq!(products.len(), shape.map_or(linears, |s| 2 * s.sites), "{arch}");
            assert_eq!(shape.is_some(), lora.is_some());
            assert_eq!(shape.is_some_and(|s| s.dropout), dropout.is_some_and(|d| d > 0.0));
            // 2100 rows: the weight gradients split K (the rows) on GPUs, into 2 ranges here.
            for (rows, n) in [(1, 1), (18, 18), (300, 7), (300, 300), (7, 0), (2100, 7)] {
                for opts in layouts {
                    let ws = m.workspace_with(g, rows, n, opts).unwrap();
                    let want = Workspace::bytes(&m.cfg, shape, &products, rows, n, opts);
                    assert_eq!(ws.gpu_bytes(), want, "{arch} lora {dropout:?} rows {rows} n {n} {opts:?}");
                }
            }
            let e = estimate(&m.cfg, lora.as_ref(), 3, 50).unwrap();
            let ws = m.workspace_with(g, 150, 150, WorkspaceOpts::default()).unwrap();
            assert_eq!(e.activations, ws.gpu_bytes(), "{arch} lora {dropout:?}: estimate");
            assert_eq!(e.activations, hand_count(&m.cfg, lora.as_ref(), 150), "{arch} lora {dropout:?}: by hand");
            let lora_ws: u64 =
                ws.lora.as_ref().map_or(0, |l| l.u.iter().chain([&l.g]).chain(&l.xd).map(|t| t.buf.size()).sum());
            assert_eq!(e.lora_activations, lora_ws, "{arch} lora {dropout:?}: adapters' share");
            assert_eq!(e.frozen_weights + e.trainable_weights + e.grads_and_moments, m.params.gpu_bytes());
        }
    }
}
