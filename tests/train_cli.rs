//! The `train` command end to end on the llama fixture folder: the loss falls, the trained
//! model loads back as a Hugging Face folder, and `--resume` continues exactly.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{block, gpu};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// Counting sequences (k, k+1, ...): learnable, so the loss falls within a few steps.
fn jsonl(first: u32, n: u32) -> String {
    (first..first + n)
        .map(|k| {
            let ids: Vec<u32> = (0..8 + k % 3).map(|i| (k * 7 + i) % 97).collect();
            format!("{{\"input_ids\": {ids:?}, \"prompt_len\": 3}}\n")
        })
        .collect()
}

fn train(dir: &Path, out: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "train".to_string(),
        "--model".into(),
        fixture().display().to_string(),
        "--data".into(),
        dir.join("train.jsonl").display().to_string(),
        "--valid".into(),
        dir.join("valid.jsonl").display().to_string(),
        "--out".into(),
        dir.join(out).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_webtune")).args(&args).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    eprintln!("$ webtune {}\n{stdout}{stderr}", args.join(" "));
    (o.status.success(), stdout, stderr)
}

/// (step, the line without its tokens/s) of each step line.
fn steps(stdout: &str) -> Vec<(u64, String, f64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("step ") && l.contains(" loss "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let step = w[1].split('/').next().unwrap().parse().unwrap();
            let loss = w[w.iter().position(|&x| x == "loss").unwrap() + 1].parse().unwrap();
            (step, l.split(" tokens/s").next().unwrap().to_string(), loss)
        })
        .collect()
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

#[test]
fn train_writes_a_model_that_loads_and_resume_continues_exactly() {
    let dir = std::env::temp_dir().join(format!("webtune-train-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.jsonl"), jsonl(0, 12)).unwrap();
    std::fs::write(dir.join("valid.jsonl"), jsonl(40, 3)).unwrap();
    let flags = [
        "--method",
        "full",
        "--steps",
        "8",
        "--batch",
        "4",
        "--grad-accum",
        "2",
        "--lr",
        "1e-2",
        "--warmup",
        "1",
        "--schedule",
        "cosine",
        "--eval-every",
        "4",
        "--seed",
        "7",
        "--weight-decay",
        "0.01",
    ];

    // Straight through.
    let (ok, out_a, _) = train(&dir, "a", &flags);
    assert!(ok);
    let a = steps(&out_a);
    assert_eq!(a.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    let first = (a[1].2 + a[2].2) / 2.0; // step 1 runs at lr 0 (warm-up)
    let last = (a[6].2 + a[7].2) / 2.0;
    assert!(last < 0.8 * first, "training loss falls: {first} -> {last}");
    let valid: Vec<&str> = out_a.lines().filter(|l| l.contains("valid_loss")).collect();
    assert_eq!(valid.len(), 2, "validation after steps 4 and 8");

    // The trained model loads back as an HF folder, with the checkpoint's weights, which
    // differ from the base model's.
    let out = dir.join("a");
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), std::fs::read(fixture().join("config.json")).unwrap());
    let g = gpu();
    let trained = webtune::load::model_from_hf_dir(g, &out).unwrap();
    let base = webtune::load::model_from_hf_dir(g, &fixture()).unwrap();
    let state = std::fs::read(out.join("state.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&state).unwrap();
    for (i, s) in trained.params.specs.iter().enumerate() {
        let w = block(trained.params.read(g, i)).unwrap();
        let saved = st.tensor(&s.name).unwrap();
        assert_eq!(bytemuck::cast_slice::<f32, u8>(&w), saved.data(), "{}", s.name);
        assert_ne!(w, block(base.params.read(g, i)).unwrap(), "{} did not change", s.name);
    }

    // Stop after 4 steps, then resume (settings from the checkpoint) to the end.
    let mut stop = flags.to_vec();
    stop.extend(["--stop-after", "4"]);
    let (ok, out_b, _) = train(&dir, "b", &stop);
    assert!(ok);
    assert_eq!(steps(&out_b).len(), 4);
    assert!(dir.join("b/state.safetensors").exists() && !dir.join("b/model.safetensors").exists());
    let resume = dir.join("b/state.safetensors").display().to_string();
    let (ok, out_c, err_c) = train(&dir, "c", &["--resume", &resume]);
    assert!(ok && err_c.contains("at step 4"), "{err_c}");
    let c = steps(&out_c);
    assert_eq!(c.iter().map(|s| &s.1).collect::<Vec<_>>(), a[4..].iter().map(|s| &s.1).collect::<Vec<_>>());
    assert_eq!(tensors(&dir.join("c/model.safetensors")), tensors(&dir.join("a/model.safetensors")));
    assert_eq!(tensors(&dir.join("c/state.safetensors")), tensors(&dir.join("a/state.safetensors")));

    // A setting that contradicts the checkpoint is refused, by name.
    let (ok, _, err) = train(&dir, "d", &["--resume", &resume, "--lr", "1e-3"]);
    assert!(!ok && err.contains("run.lr is 0.01 in the checkpoint but 0.001 here"), "{err}");
    // So is other data.
    std::fs::write(dir.join("train.jsonl"), jsonl(1, 12)).unwrap();
    let (ok, _, err) = train(&dir, "d", &["--resume", &resume]);
    assert!(!ok && err.contains("the training set") && err.contains("--max-len"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `train --method lora` writes a PEFT adapter folder that imports onto the base and
/// changes its outputs, and the base weights in the run stay frozen.
#[test]
fn lora_training_writes_a_peft_adapter() {
    let dir = tempdir("lora");
    std::fs::write(dir.join("train.jsonl"), jsonl(0, 24)).unwrap();
    std::fs::write(dir.join("valid.jsonl"), jsonl(40, 6)).unwrap();
    let (ok, stdout, stderr) = train(
        &dir,
        "out",
        &["--method", "lora", "--lora-rank", "4", "--steps", "8", "--batch", "4", "--lr", "0.02", "--eval-every", "4"],
    );
    assert!(ok, "{stderr}");
    let s = steps(&stdout);
    assert_eq!(s.len(), 8);
    assert!(s[7].2 < s[0].2, "the LoRA loss falls: {} -> {}", s[0].2, s[7].2);
    let out = dir.join("out");
    let files = webtune::export::peft::AdapterFiles {
        config_json: std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        safetensors: std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
    };
    let cfg = webtune::export::peft::parse_adapter_config(&files.config_json).unwrap();
    assert_eq!(cfg.rank, 4);
    let g = gpu();
    let m = webtune::load::model_from_hf_dir_lora(g, &fixture(), Some(&cfg)).unwrap();
    webtune::export::peft::import_adapter(g, &m, &files).unwrap();
    let (_, _, b) = m.lora_params()[0];
    let trained_b = block(m.params.read(g, b)).unwrap();
    assert!(trained_b.iter().any(|&x| x != 0.0), "B starts at zero and must have trained");

    // Continue that adapter: with a learning rate of 0 the adapter comes out bit for bit
    // as it went in (so it was imported, not re-initialized), and its first loss is the
    // trained one, not the base model's.
    let out_s = out.display().to_string();
    let (ok, stdout2, stderr) = train(
        &dir,
        "again",
        &["--method", "lora", "--adapter", &out_s, "--steps", "1", "--batch", "4", "--lr", "0", "--weight-decay", "0"],
    );
    assert!(ok, "{stderr}");
    let again = dir.join("again");
    assert_eq!(tensors(&again.join("adapter_model.safetensors")), tensors(&out.join("adapter_model.safetensors")));
    let s2 = steps(&stdout2);
    assert!(
        s2[0].2 < s[0].2 * 0.9,
        "the continued run starts from the trained adapter: {} vs base {}",
        s2[0].2,
        s[0].2
    );
    // A broken adapter is refused by name.
    std::fs::write(again.join("adapter_model.safetensors"), b"not a safetensors file").unwrap();
    let again_s = again.display().to_string();
    let (ok, _, stderr) = train(&dir, "third", &["--method", "lora", "--adapter", &again_s, "--steps", "1"]);
    assert!(!ok);
    assert!(stderr.contains("adapter_model.safetensors"), "{stderr}");
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webtune-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn smollm2() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing: run scripts/fetch-model.sh", p.display());
        eprintln!("SKIPPED: {} is missing", p.display());
        return None;
    }
    Some(p)
}

fn webtune(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_webtune")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "webtune {}: {stderr}", args.join(" "));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `tokenize` on the default GGUF gives transformers' ids (tests/fixtures/smollm2-tokenizer).
#[test]
fn tokenize_gives_transformers_ids() {
    let Some(m) = smollm2() else { return };
    let out = webtune(&["tokenize", "--model", m.to_str().unwrap(), "--text", "Hello, world!"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ids"], serde_json::json!([19556, 28, 905, 17]), "{out}");
}

/// `generate` with the chat template on the real default model answers a question it
/// knows (greedy, so deterministic).
#[test]
fn generate_answers_with_the_default_model() {
    let Some(m) = smollm2() else { return };
    let out = webtune(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-new-tokens",
        "12",
    ]);
    assert!(out.contains("Paris"), "{out}");
}
