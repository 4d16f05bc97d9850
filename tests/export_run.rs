//! `webtune export-run`: the project's files, train.py parsing as Python, the settings block
//! equal to the settings given, and the committed example project equal to what the
//! command writes now (so the template stays current). No GPU, no torch.
//! `WEBTUNE_BLESS=1` rewrites the committed example.

use std::path::{Path, PathBuf};
use std::process::Command;

use webtune::session::export_run::embedded_json;
use webtune::session::{Method, Settings};

const FIXTURE: &str = "tests/fixtures/export_run/project";

/// The example's command line (model and data paths relative to the crate root).
fn export(out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args([
            "export-run",
            "--model",
            "tests/fixtures/llama",
            "--data",
            "tests/fixtures/export_run/input/train.jsonl",
            "--valid",
            "tests/fixtures/export_run/input/eval.jsonl",
            "--method",
            "full",
            "--steps",
            "2",
            "--batch",
            "3",
            "--grad-accum",
            "3",
            "--lr",
            "0.001",
            "--out",
        ])
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "export-run failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn expected_settings() -> Settings {
    Settings { method: Method::Full, steps: Some(2), batch: 3, grad_accum: 3, lr: 1e-3, ..Default::default() }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webtune-export-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn writes_the_project_with_the_settings_given() {
    let out = tmp("files");
    export(&out);
    let names: Vec<String> = files(&out).iter().map(|p| p.display().to_string()).collect();
    for f in [
        "README.md",
        "train.py",
        "requirements.txt",
        "data/train.jsonl",
        "data/eval.jsonl",
        "accelerate/single_gpu.yaml",
        "accelerate/multi_gpu.yaml",
        "accelerate/fsdp.yaml",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} missing from {names:?}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (copy, given) in [("data/train.jsonl", "train.jsonl"), ("data/eval.jsonl", "eval.jsonl")] {
        let a = std::fs::read(out.join(copy)).unwrap();
        let b = std::fs::read(root.join("tests/fixtures/export_run/input").join(given)).unwrap();
        assert_eq!(a, b, "{copy} is not the data as given");
    }
    let py = std::fs::read_to_string(out.join("train.py")).unwrap();
    let v = embedded_json(&py).unwrap();
    assert_eq!(Settings::from_json(&v["settings"]).unwrap(), expected_settings());
    assert_eq!(v["model"], "tests/fixtures/llama");
    assert_eq!(v["eval_file"], "data/eval.jsonl");
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("pip install -r requirements.txt"));
    assert!(readme.contains("accelerate launch --config_file accelerate/single_gpu.yaml train.py"));
    let req = std::fs::read_to_string(out.join("requirements.txt")).unwrap();
    for p in ["torch==", "transformers==", "trl==", "peft==", "accelerate==", "datasets=="] {
        assert!(req.contains(p), "{p} not pinned");
    }
    // train.py is Python (when python3 is here).
    match Command::new("python3").arg("-m").arg("py_compile").arg(out.join("train.py")).output() {
        Ok(o) => assert!(o.status.success(), "train.py: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => eprintln!("python3 not found: train.py not compiled"),
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn committed_example_is_current() {
    let out = tmp("fixture");
    export(&out);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    if std::env::var_os("WEBTUNE_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&fixture);
        for f in files(&out) {
            std::fs::create_dir_all(fixture.join(&f).parent().unwrap()).unwrap();
            std::fs::copy(out.join(&f), fixture.join(&f)).unwrap();
        }
    }
    assert_eq!(files(&out), files(&fixture), "the files differ from {FIXTURE} (WEBTUNE_BLESS=1 rewrites it)");
    for f in files(&out) {
        let a = std::fs::read_to_string(out.join(&f)).unwrap();
        let b = std::fs::read_to_string(fixture.join(&f)).unwrap();
        assert!(a == b, "{} differs from {FIXTURE} (WEBTUNE_BLESS=1 rewrites it)", f.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn settings_flags_go_on_top_and_bad_ones_are_named() {
    let out = tmp("bad");
    let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args(["export-run", "--model", "x.gguf", "--data", "tests/fixtures/export_run/input/train.jsonl"])
        .args(["--batch", "2", "--grad-accum", "3", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("grad_accum"));
    let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args(["export-run", "--model", "x.gguf", "--data", "tests/fixtures/export_run/input/train.jsonl"])
        .args(["--loss", "per-token", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = embedded_json(&std::fs::read_to_string(out.join("train.py")).unwrap()).unwrap();
    assert!(v["model"].is_null(), "an unknown GGUF leaves the model to fill in");
    assert_eq!(v["settings"]["loss"], "per-token");
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("fill in"));
    let _ = std::fs::remove_dir_all(&out);
}

/// webtune's own first step (on the GPU; lavapipe will do) against the exported train.py's
/// first step under transformers + TRL (tests/fixtures/export_run/trl_first_step.json,
/// from tests/fixtures/make_export_run_fixture.py) in each loss mode: full fine-tuning of
/// the llama fixture, a batch of 3 accumulated over 3 micro-batches.
#[test]
fn first_step_matches_the_exported_trl_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("tests/fixtures/export_run/trl_first_step.json");
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(Settings::from_json(&want["settings"]).unwrap(), expected_settings(), "the fixture is of another run");
    for mode in ["per-example", "per-token", "all-tokens"] {
        let out = tmp(&format!("train-{mode}"));
        let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
            .args(["train", "--model", "tests/fixtures/llama", "--data", "tests/fixtures/export_run/input/train.jsonl"])
            .args(["--method", "full", "--steps", "2", "--batch", "3", "--grad-accum", "3", "--lr", "0.001"])
            .args(["--loss", mode, "--out"])
            .arg(&out)
            .current_dir(root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "webtune train: {stdout}{}", String::from_utf8_lossy(&o.stderr));
        matches_trl(mode, &stdout, &want["modes"][mode]);
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// `--from-state`: the settings of a saved state (webtune train's OUT/state.safetensors,
/// on the GPU), with flags given going on top.
#[test]
fn from_state_takes_the_runs_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tmp("state");
    let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args(["train", "--model", "tests/fixtures/llama", "--data", "tests/fixtures/export_run/input/train.jsonl"])
        .args(["--method", "lora", "--lora-rank", "4", "--lora-targets", "q_proj,v_proj", "--loss", "per-token"])
        .args([
            "--steps",
            "1",
            "--batch",
            "2",
            "--lr",
            "0.002",
            "--schedule",
            "cosine",
            "--max-grad-norm",
            "0",
            "--out",
        ])
        .arg(out.join("run"))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "webtune train: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args([
            "export-run",
            "--model",
            "tests/fixtures/llama",
            "--data",
            "tests/fixtures/export_run/input/train.jsonl",
        ])
        .arg("--from-state")
        .arg(out.join("run/state.safetensors"))
        .args(["--seed", "7", "--out"])
        .arg(out.join("project"))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "export-run: {}", String::from_utf8_lossy(&o.stderr));
    let v = embedded_json(&std::fs::read_to_string(out.join("project/train.py")).unwrap()).unwrap();
    let want = Settings {
        method: Method::Lora,
        lora_rank: 4,
        lora_targets: vec!["q_proj".into(), "v_proj".into()],
        loss: webtune::train::LossMode::PerToken,
        steps: Some(1),
        batch: 2,
        lr: 2e-3,
        schedule: webtune::train::ScheduleKind::Cosine,
        max_grad_norm: 0.0,
        seed: 7,
        ..Default::default()
    };
    assert_eq!(Settings::from_json(&v["settings"]).unwrap(), want);
    let _ = std::fs::remove_dir_all(&out);
}

/// The exported train.py prepares data as webtune does: its ids and trained masks
/// (tests/fixtures/export_run/masks.json, from make_export_run_mask_fixture.py with the
/// SmolLM2 tokenizer: chat, plain and conversational prompt/completion, text, a prompt
/// cut from the left) equal webtune's own (`webtune::data`).
#[test]
fn exported_masks_equal_webtunes() {
    use webtune::data::{self, DataOptions};
    use webtune::tokenize::Tokenizer;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let tok = Tokenizer::from_hf_bytes(
        &read("tests/fixtures/smollm2-tokenizer/tokenizer.json"),
        Some(&read("tests/fixtures/smollm2-tokenizer/tokenizer_config.json")),
    )
    .unwrap()
    .with_chat_template(&String::from_utf8(read("tests/fixtures/smollm2-tokenizer/chat_template.jinja")).unwrap())
    .unwrap();
    let want: serde_json::Value = serde_json::from_slice(&read("tests/fixtures/export_run/masks.json")).unwrap();
    let text = String::from_utf8(read("tests/fixtures/export_run/masks_input.jsonl")).unwrap();
    let max_len = Some(want["max_len"].as_u64().unwrap() as usize);
    for (key, last_turn_only) in [("examples", false), ("last_turn_only", true)] {
        let opts = DataOptions { max_len, last_turn_only, ..Default::default() };
        let (got, _) = data::load_jsonl(&tok, "masks_input.jsonl", &text, &opts).unwrap();
        let want = want[key].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            let ids: Vec<u32> = serde_json::from_value(w["input_ids"].clone()).unwrap();
            let trained: Vec<bool> = w["trained"].as_array().unwrap().iter().map(|t| t.as_u64() == Some(1)).collect();
            assert_eq!(g.ids, ids, "{key} line {}: ids", w["line"]);
            assert_eq!(g.trained, trained, "{key} line {}: trained mask", w["line"]);
        }
    }
}

/// webtune train's stdout and its step lines' loss and grad_norm.
fn train(args: &[&str], out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_webtune"))
        .args(["train", "--data", "tests/fixtures/export_run/input/train.jsonl"])
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "webtune train: {stdout}{}", String::from_utf8_lossy(&o.stderr));
    stdout
}

/// Webtune's first two steps (printed by `train`) against the TRL run's `t`: the loss and
/// gradient norm of step 1 and the loss after one clipped AdamW update. The printed loss
/// has 6 decimals and the norm 4: both well inside the tolerances.
fn matches_trl(label: &str, stdout: &str, t: &serde_json::Value) {
    let (loss, norm) = step_line(stdout, 1);
    let (tl, tn) = (t["first_step_loss"].as_f64().unwrap(), t["first_step_grad_norm"].as_f64().unwrap());
    let (dl, dn) = ((loss - tl).abs() / tl, (norm - tn).abs() / tn);
    let (loss2, t2) = (step_line(stdout, 2).0, t["step_losses"][1].as_f64().unwrap());
    let dl2 = (loss2 - t2).abs() / t2;
    eprintln!(
        "{label}: webtune loss {loss} grad_norm {norm}; TRL {tl} {tn}; relative {dl:.2e} {dn:.2e}; \
         step 2 loss webtune {loss2} TRL {t2} (relative {dl2:.2e})"
    );
    assert!(dl <= 1e-5, "{label} loss: webtune {loss}, TRL {tl} (relative {dl:.2e})");
    assert!(dn <= 1e-4, "{label} grad norm: webtune {norm}, TRL {tn} (relative {dn:.2e})");
    assert!(dl2 <= 1e-5, "{label} step 2 loss: webtune {loss2}, TRL {t2} (relative {dl2:.2e})");
}

fn step_line(stdout: &str, n: u32) -> (f64, f64) {
    let line = stdout.lines().find(|l| l.starts_with(&format!("step {n}/"))).expect("a step line");
    let w: Vec<&str> = line.split_whitespace().collect();
    let field = |k: &str| -> f64 { w[w.iter().position(|&x| x == k).unwrap() + 1].parse().unwrap() };
    (field("loss"), field("grad_norm"))
}

/// LoRA: webtune's first step continuing from tests/fixtures/export_run/lora_adapter (the
/// adapter `webtune train --method lora --lora-rank 4 --steps 1 --lr 0` wrote: webtune's
/// initial A, B zero) against the exported train.py continuing from the same adapter under
/// TRL + PEFT (tests/fixtures/export_run/trl_lora_first_step.json), in each loss mode. Both
/// gradient norms are over the LoRA parameters only (the only ones with gradients on either
/// side). Then the adapter train.py saved
/// (per-example, after 2 steps) loads back into webtune.
#[test]
fn lora_first_step_matches_the_exported_trl_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("tests/fixtures/export_run/trl_lora_first_step.json");
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let settings = Settings::from_json(&want["settings"]).unwrap();
    assert_eq!(settings, Settings { method: Method::Lora, ..expected_settings() }, "the fixture is of another run");
    assert_eq!(want["adapter"], "tests/fixtures/export_run/lora_adapter");
    let adapter = "tests/fixtures/export_run/lora_adapter";
    for mode in ["per-example", "per-token", "all-tokens"] {
        let out = tmp(&format!("lora-{mode}"));
        let args = [
            "--model",
            "tests/fixtures/llama",
            "--method",
            "lora",
            "--adapter",
            adapter,
            "--steps",
            "2",
            "--batch",
            "3",
            "--grad-accum",
            "3",
        ];
        let stdout = train(&[&args[..], &["--lr", "0.001", "--loss", mode]].concat(), &out);
        matches_trl(&format!("lora {mode}"), &stdout, &want["modes"][mode]);
        let _ = std::fs::remove_dir_all(&out);
    }
    // The adapter train.py saved loads back into webtune (continuing from it at lr 0: its
    // loss is below TRL's step-2 loss, so its B is read and no longer zero). (The llama
    // fixture has no tokenizer, so `webtune generate` can't run on it.)
    let out = tmp("lora-trained");
    let args =
        ["--model", "tests/fixtures/llama", "--method", "lora", "--adapter", "tests/fixtures/export_run/lora_trained"];
    let args = [&args[..], &["--steps", "1"]].concat();
    let stdout = train(&[&args[..], &["--batch", "3", "--grad-accum", "3", "--lr", "0"]].concat(), &out);
    let (loss, _) = step_line(&stdout, 1);
    let t2 = want["modes"]["per-example"]["step_losses"][1].as_f64().unwrap();
    eprintln!("lora: webtune's loss with the adapter train.py saved {loss} (TRL's step 2 loss {t2})");
    assert!(loss < t2, "the saved adapter's loss {loss} is not below TRL's step-2 loss {t2}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Qwen2 (tests/fixtures/qwen2: q, k and v biases, a different RoPE base): webtune's full
/// fine-tuning steps 1 and 2 against the exported train.py's on it under TRL
/// (tests/fixtures/export_run/trl_qwen2_first_step.json), in each loss mode.
#[test]
fn qwen2_first_step_matches_the_exported_trl_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("tests/fixtures/export_run/trl_qwen2_first_step.json");
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(Settings::from_json(&want["settings"]).unwrap(), expected_settings(), "the fixture is of another run");
    assert_eq!(want["model"], "tests/fixtures/qwen2");
    for mode in ["per-example", "per-token", "all-tokens"] {
        let out = tmp(&format!("qwen2-{mode}"));
        let args = ["--model", "tests/fixtures/qwen2", "--method", "full", "--steps", "2", "--batch", "3"];
        let stdout = train(&[&args[..], &["--grad-accum", "3", "--lr", "0.001", "--loss", mode]].concat(), &out);
        matches_trl(&format!("qwen2 {mode}"), &stdout, &want["modes"][mode]);
        let _ = std::fs::remove_dir_all(&out);
    }
}
