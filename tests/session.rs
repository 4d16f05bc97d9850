//! One core for both front-ends: the same settings through the command line (`webtune
//! train`, a separate process) and through the page's path (`session::Session` fed named
//! file bytes, what `src/web.rs` translates the page's calls into) give the same
//! examples, masks, truncation, split, first-step loss and trained weights; settings that
//! cannot work are refused before the first step; a state saved with clipping off
//! restores.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{block, gpu};
use serde_json::json;
use webtune::session::{Session, Settings};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder's files as the page hands them over: (name, bytes).
fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn smollm2() -> Option<PathBuf> {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing: run scripts/fetch-model.sh", p.display());
        eprintln!("SKIPPED: {} is missing", p.display());
        return None;
    }
    Some(p)
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webtune-session-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_webtune")).args(args).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    eprintln!("$ webtune {}\n{out}{err}", args.join(" "));
    (o.status.success(), out, err)
}

/// Step losses printed by `train` (6 decimals).
fn losses(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("step ") && l.contains(" loss "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w[w.iter().position(|&x| x == "loss").unwrap() + 1].parse().unwrap()
        })
        .collect()
}

fn tensors(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

/// The sentiment demo on the default model at a maximum length shorter than its prompts:
/// the CLI and the page's session keep every example (prompt tokens cut from the left,
/// answers whole), give the same ids and masks, the same seeded split, the same first
/// step and the same trained adapter, bit for bit.
#[test]
fn cli_and_page_session_train_the_same() {
    let Some(model) = smollm2() else { return };
    let data = root().join("www/demo/sentiment-train.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    let dir = tempdir("same");
    let flags = [
        "--lora-rank",
        "4",
        "--lora-targets",
        "q_proj,v_proj",
        "--max-len",
        "48",
        "--batch",
        "2",
        "--steps",
        "1",
        "--lr",
        "1e-3",
        "--val-share",
        "0.25",
        "--seed",
        "3",
    ];
    let out = dir.join("cli");
    let mut args = vec!["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(flags);
    let (ok, stdout, stderr) = cli(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("lost prompt tokens (cut from the left)"), "{stderr}");

    // The page's path: settings as the page's JSON, the model as named bytes.
    let g = gpu();
    let settings = Settings::default()
        .patched(&json!({
            "lora_rank": 4, "lora_targets": ["q_proj", "v_proj"], "max_len": 48, "batch": 2, "steps": 1,
            "lr": 1e-3, "val_share": 0.25, "seed": 3,
        }))
        .unwrap();
    let mut s = Session::new(g, settings).unwrap();
    let files = vec![(model.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&model).unwrap())];
    s.load_files("SmolLM2-135M-Instruct.Q4_1.gguf", &files).unwrap();
    let summary = s.set_data(&data.display().to_string(), &text).unwrap();
    assert_eq!(summary.examples, text.lines().filter(|l| !l.trim().is_empty()).count(), "every example kept");
    assert_eq!(summary.dropped, 0);
    assert!(summary.truncated_prompt > 0 && summary.truncated_answer == 0, "{summary:?}");
    let tok = s.tokenizer().unwrap();
    for i in &s.data().unwrap().items {
        let e = &i.example;
        assert!(e.ids.len() <= 48, "{}: {} tokens", e.origin, e.ids.len());
        let answer: Vec<u32> = e.ids.iter().zip(&e.trained).filter(|(_, &t)| t).map(|(&id, _)| id).collect();
        let answer = tok.decode(&answer).unwrap();
        assert!(
            ["positive<|im_end|>", "negative<|im_end|>"].contains(&answer.as_str()),
            "{}: trained {answer:?}",
            e.origin
        );
        assert!(i.prompt.as_deref().unwrap().starts_with("Is this review"), "the user's words: {:?}", i.prompt);
    }
    let split = s.split().unwrap();
    assert_eq!((split.train.len(), split.valid.len()), (48, 16));
    let r = block(s.step()).unwrap().unwrap();
    let cli_loss = losses(&stdout)[0];
    assert!((r.loss - cli_loss).abs() <= 5e-7 * cli_loss.max(1.0), "first step: session {} vs CLI {cli_loss}", r.loss);

    // The same state: weights, moments, step and data order.
    let state = block(s.save_state()).unwrap();
    let cli_state = std::fs::read(out.join("state.safetensors")).unwrap();
    assert_eq!(tensors(&state), tensors(&cli_state), "trained adapter and AdamW moments");
    let adapter = block(s.export(None)).unwrap();
    assert_eq!(adapter[1].0, "adapter_model.safetensors");
    assert_eq!(tensors(&adapter[1].1), tensors(&std::fs::read(out.join("adapter_model.safetensors")).unwrap()));
    std::fs::remove_dir_all(&dir).ok();
}

/// Settings that cannot work stop `train` before step 1, with the reason and the key.
#[test]
fn conflicts_are_found_before_the_first_step() {
    let dir = tempdir("conflicts");
    let fixture = root().join("tests/fixtures/llama");
    let jsonl: String =
        (0..6).map(|k| format!("{{\"input_ids\": [{k}, 5, 6, 7, 8, 9, 10, 11], \"prompt_len\": 3}}\n")).collect();
    std::fs::write(dir.join("train.jsonl"), &jsonl).unwrap();
    let (data, out) = (dir.join("train.jsonl"), dir.join("out"));
    let base = |extra: &[&str]| {
        let mut args = vec!["train", "--model", fixture.to_str().unwrap(), "--data", data.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        cli(&args)
    };
    for (extra, want) in [
        (&["--method", "full", "--format", "peft"][..], "`format`"),
        (&["--batch", "2", "--grad-accum", "3"][..], "`grad_accum`"),
        (&["--pack", "4"][..], "`pack`"),
        (&["--max-len", "1"][..], "`max_len`"),
        (&["--lora-targets", "no_such_proj"][..], "no_such_proj"),
        (&["--lr=-1"][..], "`lr`"),
    ] {
        let (ok, stdout, stderr) = base(extra);
        assert!(!ok, "{extra:?} must fail");
        assert!(!stdout.contains("step 1/"), "{extra:?}: found only after training: {stdout}");
        assert!(stderr.contains(want), "{extra:?}: the error names {want}: {stderr}");
    }
    // A merged Hugging Face folder cannot come from a GGUF base: refused before the model
    // even loads, pointing at `--format gguf` (what `auto` gives full fine-tuning there).
    if let Some(m) = smollm2() {
        let data = root().join("www/demo/sentiment-train.jsonl");
        let out = dir.join("gguf");
        let args = ["train", "--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--method", "full"];
        let args = [&args[..], &["--format", "merged"]].concat();
        let (ok, stdout, stderr) = cli(&[&args[..], &["--steps", "1", "--out", out.to_str().unwrap()]].concat());
        assert!(!ok && !stdout.contains("step 1/"), "{stdout}");
        assert!(stderr.contains("`format`") && stderr.contains("format gguf"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A state saved with clipping off (0) restores, with its settings, and continues.
#[test]
fn state_with_clipping_off_restores() {
    let g = gpu();
    let fixture = root().join("tests/fixtures/llama");
    let jsonl: String =
        (0..8).map(|k| format!("{{\"input_ids\": [{k}, 5, 6, 7, 8, 9, 10, 11], \"prompt_len\": 3}}\n")).collect();
    let settings = Settings { max_grad_norm: 0.0, steps: Some(3), batch: 4, lr: 1e-2, ..Default::default() };
    let mut a = Session::new(g, settings.clone()).unwrap();
    a.load_files("llama", &folder_files(&fixture)).unwrap();
    a.set_data("t.jsonl", &jsonl).unwrap();
    block(a.step()).unwrap().unwrap();
    let state = block(a.save_state()).unwrap();
    let next = block(a.step()).unwrap().unwrap();

    let mut b = Session::new(g, Settings::default()).unwrap();
    b.configure(Settings { method: settings.method, ..Default::default() }).unwrap();
    b.load_files("llama", &folder_files(&fixture)).unwrap();
    b.set_data("t.jsonl", &jsonl).unwrap();
    let plan = b.restore_state(&state).unwrap();
    assert_eq!(plan.settings.max_grad_norm, 0.0);
    assert_eq!(plan.done, 1);
    let again = block(b.step()).unwrap().unwrap();
    assert_eq!((again.step, again.loss), (next.step, next.loss), "continues exactly");

    // "Continue on a GPU cluster": the TRL project of this run, continuing from the
    // adapter as trained so far, with the data as given.
    let files = block(b.export_project()).unwrap();
    let get =
        |n: &str| files.iter().find(|(f, _)| f == n).map(|(_, d)| d.clone()).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(get("data/train.jsonl"), jsonl.as_bytes());
    assert_eq!(get("adapter/adapter_model.safetensors"), block(b.export(None)).unwrap()[1].1);
    let train_py = String::from_utf8(get("train.py")).unwrap();
    let j = webtune::session::export_run::embedded_json(&train_py).unwrap();
    assert_eq!(j["adapter"], "adapter");
    assert_eq!(j["settings"]["max_grad_norm"], 0.0);
    assert!(j["model"].is_null() && j["model_note"].as_str().unwrap().contains("local files"), "{j}");
}
