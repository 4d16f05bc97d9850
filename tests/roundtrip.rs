//! What we export loads in PEFT / transformers and gives our numbers (issue 4).
//!
//! `tests/fixtures/roundtrip/<arch>/` holds, for each tiny architecture, a LoRA adapter
//! and a merged Hugging Face folder that OUR exporters wrote after a few training steps
//! (B non-zero), and our logits on the base fixture's three examples. They are written by
//! the ignored test `write_roundtrip_fixtures` below. `tests/fixtures/check_roundtrip.py`
//! then loads them with `PeftModel.from_pretrained` and `AutoModelForCausalLM.from_pretrained`
//! (float64), checks that every LoRA key was loaded and nothing was left over, saves PEFT's
//! logits (`peft_logits.safetensors`) and writes its measured errors and the sha256 of every
//! file it read to `results.json`.
//!
//! CI has no PyTorch, so `peft_loaded_our_export_and_gave_our_logits` checks the committed
//! evidence instead: the files are the ones Python measured (sha256), today's exporters
//! still write exactly those bytes, the engine importing the committed adapter (and loading
//! the committed merged folder) gives PEFT's float64 logits, and Python's own measured
//! errors are within tolerance.
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "model/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{block, check, gpu, Tol};
use fixture::{Fixture, ARCHS};
use serde_json::Value;
use webtune::export::merged::export_merged;
use webtune::export::peft::{export_adapter, import_adapter, parse_adapter_config, AdapterFiles};
use webtune::gpu::Gpu;
use webtune::model::{LoraConfig, Model};
use webtune::train::{batch, Example, LossMode, Trainer};

/// Our f32 logits vs PEFT's float64 logits of the same adapter, relative to the largest
/// |logit| of the example: the project's whole-model LOGITS tolerance (tests/model/parity.rs,
/// tests/lora.rs). The f32 engine lands at ~1e-7..1e-6; an adapter applied with the wrong
/// scale, transposed, or missing on one layer moves logits by >1e-2 (the adapters here
/// change the logits by ~0.1..1, see `min_adapter_effect`).
const LOGITS: Tol = Tol { name: "LOGITS", abs: 1e-6, rel: 1e-5 };
/// The same tolerance as a plain relative number, as check_roundtrip.py records it in
/// results.json (`tolerance.LOGITS`); this test requires Python to have used the same one.
const LOGITS_REL: f64 = 1e-5;
/// Our merged f32 weights (W + s B A in f64, rounded once) vs PEFT's float64
/// `merge_and_unload`, relative to the tensor's largest element, as Python measured it:
/// half an f32 ulp (2^-24 ~ 6e-8) plus margin for PEFT's own rounding. A transposed or
/// mis-scaled delta (GPT-2's fan_in_fan_out) is off by ~1e-2.
const MERGED_WEIGHTS: f64 = 1.2e-7;
/// Training that yields the adapters: enough AdamW steps (lr 1e-2, the base fixture's
/// settings) that B is far from zero and the logits move.
const STEPS: usize = 3;
/// The smallest max |logit(adapter) - logit(base)| accepted: an adapter that barely
/// changes the model would let a wrongly-applied adapter pass the LOGITS check.
const ADAPTER_EFFECT: f64 = 0.05;

/// The adapters: different targets, scales and options per architecture.
fn lora_config(arch: &str) -> LoraConfig {
    match arch {
        // All seven linears; dropout during training (PEFT ignores it in eval).
        "llama" => LoraConfig {
            dropout: 0.1,
            seed: 31,
            ..LoraConfig::new(4, 8.0, LoraConfig::all_linear(webtune::model::Arch::Llama))
        },
        // rsLoRA, a subset (k_proj and gate_proj stay plain frozen layers).
        "qwen2" => LoraConfig {
            rslora: true,
            seed: 32,
            ..LoraConfig::new(4, 16.0, &["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
        },
        // Conv1D layers: fan_in_fan_out; `c_proj` adapts attn.c_proj and mlp.c_proj.
        "gpt2" => LoraConfig { seed: 33, ..LoraConfig::new(2, 4.0, &["c_attn", "c_proj", "c_fc"]) },
        // q_proj and k_proj feed the per-head norms; the MLP's gate and down, not up.
        "qwen3" => LoraConfig {
            seed: 34,
            ..LoraConfig::new(4, 8.0, &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
        },
        // Gemma 3: o_proj and down_proj feed the post-norms; up_proj and q_proj, not gate
        // or k; rsLoRA.
        "gemma3" => LoraConfig {
            seed: 35,
            rslora: true,
            ..LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
        },
        _ => unreachable!("{arch}"),
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn out_dir(arch: &str) -> PathBuf {
    fixtures().join("roundtrip").join(arch)
}

/// What `base_model_name_or_path` says: the base folder, relative to the repository root.
fn base_name(arch: &str) -> String {
    format!("tests/fixtures/{arch}")
}

fn lora_model(g: &Gpu, arch: &str, cfg: &LoraConfig) -> Model {
    webtune::load::model_from_hf_dir_lora(g, &fixtures().join(arch), Some(cfg)).unwrap()
}

/// Every position's logits of example `e`, (len, V) row-major.
fn all_logits(t: &mut Trainer, e: &Example) -> Vec<f32> {
    let mut mb = batch::plan(std::slice::from_ref(e), LossMode::AllTokens, 1).unwrap().remove(0);
    mb.loss_rows = (0..e.ids.len() as u32).collect();
    mb.targets = vec![0; e.ids.len()];
    mb.weights = vec![0.0; e.ids.len()];
    block(t.logits(&mb)).unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn read_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = match v.dtype() {
                safetensors::Dtype::F32 => {
                    v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::F64 => {
                    v.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
                }
                d => panic!("{}: {name} is {d:?}", path.display()),
            };
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Regenerate `tests/fixtures/roundtrip/<arch>/` (then run check_roundtrip.py):
/// `WGPU_BACKEND=vulkan cargo test --test roundtrip -- --ignored write_roundtrip_fixtures`
#[test]
#[ignore = "writes tests/fixtures/roundtrip; run by hand, then tests/fixtures/check_roundtrip.py"]
fn write_roundtrip_fixtures() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let cfg = lora_config(arch);
        let mut base = fx.trainer(g, LossMode::PerExample, 8);
        let mut t = Trainer::new(g, lora_model(g, arch, &cfg), base.cfg.clone()).unwrap();
        for _ in 0..STEPS {
            block(t.step(&fx.examples)).unwrap();
        }
        for (_, _, b) in t.model.lora_params() {
            assert!(block(t.model.params.read(g, b)).unwrap().iter().any(|&x| x != 0.0), "{arch}: B is zero");
        }
        let dir = out_dir(arch);
        let _ = std::fs::remove_dir_all(&dir);
        let adapter = block(export_adapter(g, &t.model, &base_name(arch))).unwrap();
        write(&dir.join("adapter/adapter_config.json"), adapter.config_json.as_bytes());
        write(&dir.join("adapter/adapter_model.safetensors"), &adapter.safetensors);
        let config = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
        let merged = block(export_merged(g, &t.model, &config)).unwrap();
        write(&dir.join("merged/config.json"), merged.config_json.as_bytes());
        write(&dir.join("merged/model.safetensors"), &merged.safetensors);
        let v = t.model.cfg.vocab;
        let mut logits = Vec::new();
        let mut effect = 0f64;
        for (i, e) in fx.examples.iter().enumerate() {
            let got = all_logits(&mut t, e);
            let b = all_logits(&mut base, e);
            effect = got.iter().zip(&b).fold(effect, |m, (x, y)| m.max((x - y).abs() as f64));
            logits.push((format!("logits.{i}"), vec![e.ids.len(), v], got));
        }
        assert!(effect > ADAPTER_EFFECT, "{arch}: the adapter changes the logits by only {effect}");
        write(&dir.join("ours_logits.safetensors"), &webtune::export::safetensors_f32(&logits).unwrap());
        eprintln!("{arch}: wrote {} (adapter changes logits by up to {effect:.3})", dir.display());
    }
}

#[test]
fn peft_loaded_our_export_and_gave_our_logits() {
    let g = gpu();
    let results_path = fixtures().join("roundtrip/results.json");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&results_path).unwrap()).unwrap();
    for (name, tol) in [("LOGITS", LOGITS_REL), ("MERGED_WEIGHTS", MERGED_WEIGHTS)] {
        assert_eq!(results["tolerance"][name].as_f64(), Some(tol), "check_roundtrip.py used another {name}");
    }
    for arch in ARCHS {
        let r = &results["archs"][arch];
        let dir = out_dir(arch);
        // 1. The committed files are the ones Python loaded and measured.
        let hashes = r["sha256"].as_object().unwrap_or_else(|| panic!("results.json: {arch} has no sha256"));
        for f in [
            "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors",
            "merged/config.json",
            "merged/model.safetensors",
            "ours_logits.safetensors",
            "peft_logits.safetensors",
        ] {
            let bytes = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{arch}/{f}: {e}"));
            assert_eq!(
                hashes.get(f).and_then(|h| h.as_str()),
                Some(sha256_hex(&bytes).as_str()),
                "{arch}/{f} is not the file check_roundtrip.py measured: rerun it"
            );
        }
        // 2. Python's measurements, within tolerance, and Python's strict load checks ran.
        for k in ["peft_vs_ours", "merged_vs_ours", "merged_vs_peft"] {
            let e = r["max_rel_err"][k].as_f64().unwrap_or_else(|| panic!("results.json: {arch} lacks {k}"));
            assert!(e <= LOGITS_REL, "{arch} {k}: {e:.2e} > LOGITS {LOGITS_REL:.0e}");
        }
        let n_keys = r["peft_lora_keys_loaded"].as_u64().unwrap() as usize;
        let e = r["merged_weights_max_rel_err"].as_f64().unwrap();
        assert!(e <= MERGED_WEIGHTS, "{arch}: merged weights vs PEFT's merge_and_unload {e:.2e}");

        // 3. Import the committed adapter; today's exporter writes the same bytes back.
        let adapter = AdapterFiles {
            config_json: std::fs::read_to_string(dir.join("adapter/adapter_config.json")).unwrap(),
            safetensors: std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap(),
        };
        let cfg = parse_adapter_config(&adapter.config_json).unwrap();
        let trained = lora_config(arch);
        let mut targets = trained.targets.clone();
        targets.sort();
        assert_eq!(
            (cfg.rank, cfg.alpha, cfg.dropout, cfg.rslora, &cfg.targets),
            (trained.rank, trained.alpha, trained.dropout, trained.rslora, &targets),
            "{arch}: the committed adapter is not lora_config({arch:?})"
        );
        // f32 settings written as typed (0.1, not 0.10000000149011612), alpha as PEFT does.
        let json: Value = serde_json::from_str(&adapter.config_json).unwrap();
        let typed: f64 = trained.dropout.to_string().parse().unwrap();
        assert_eq!(json["lora_dropout"].as_f64(), Some(typed), "{arch}: lora_dropout");
        assert!(json["lora_alpha"].is_u64(), "{arch}: lora_alpha {}", json["lora_alpha"]);
        assert_eq!(json["fan_in_fan_out"], *arch == "gpt2", "{arch}");
        let model = lora_model(g, arch, &cfg);
        import_adapter(g, &model, &adapter).unwrap();
        assert_eq!(2 * model.lora_params().len(), n_keys, "{arch}: PEFT loaded every adapter tensor we have");
        let again = block(export_adapter(g, &model, &base_name(arch))).unwrap();
        assert_eq!(again.config_json, adapter.config_json, "{arch}: adapter_config.json changed");
        assert!(again.safetensors == adapter.safetensors, "{arch}: adapter_model.safetensors changed");
        let config = std::fs::read_to_string(fixtures().join(arch).join("config.json")).unwrap();
        let merged = block(export_merged(g, &model, &config)).unwrap();
        assert_eq!(merged.config_json, std::fs::read_to_string(dir.join("merged/config.json")).unwrap());
        assert!(
            merged.safetensors == std::fs::read(dir.join("merged/model.safetensors")).unwrap(),
            "{arch}: merged/model.safetensors changed"
        );

        // 4. Our logits with the imported adapter, and from the merged folder, vs PEFT's.
        let fx = Fixture::load(arch);
        let peft = read_tensors(&dir.join("peft_logits.safetensors"));
        let ours_then = read_tensors(&dir.join("ours_logits.safetensors"));
        assert_eq!(peft.len(), fx.examples.len());
        let mut base = fx.trainer(g, LossMode::PerExample, 8);
        let mut t = Trainer::new(g, model, base.cfg.clone()).unwrap();
        let merged_model = webtune::load::model_from_hf_dir(g, &dir.join("merged")).unwrap();
        let mut m = Trainer::new(g, merged_model, base.cfg.clone()).unwrap();
        let (mut worst, mut worst_m, mut effect) = (0f64, 0f64, 0f64);
        for (i, e) in fx.examples.iter().enumerate() {
            let (shape, want) = &peft[&format!("logits.{i}")];
            assert_eq!(shape, &vec![e.ids.len(), t.model.cfg.vocab], "{arch} logits.{i}");
            let got = all_logits(&mut t, e);
            worst = worst.max(check(&format!("{arch} adapter logits {i}"), &got, want, LOGITS));
            let then: Vec<f32> = ours_then[&format!("logits.{i}")].1.iter().map(|&x| x as f32).collect();
            check(&format!("{arch} committed logits {i}"), &then, want, LOGITS);
            worst_m = worst_m.max(check(&format!("{arch} merged logits {i}"), &all_logits(&mut m, e), want, LOGITS));
            let b = all_logits(&mut base, e);
            effect = want.iter().zip(&b).fold(effect, |a, (w, b)| a.max((w - *b as f64).abs()));
        }
        assert!(effect > ADAPTER_EFFECT, "{arch}: PEFT's logits differ from the base by only {effect}");
        eprintln!(
            "{arch}: vs PEFT float64 logits, imported adapter {worst:.2e}, merged folder {worst_m:.2e} \
             (adapter effect {effect:.3}); python: {}",
            r["max_rel_err"]
        );
    }
}
