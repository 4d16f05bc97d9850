//! The command line: clap flags translated into [`Settings`] and calls of the engine's
//! [`Session`], the same core the page drives. Defaults are `Settings::default()`'s; a
//! flag that is not given keeps the default (or, with `--resume`, the checkpoint's value).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use webtune::error::{Error, Result};
use webtune::gpu::Gpu;
use webtune::load::hub::{Hub, Progress};
use webtune::load::ModelSource;
use webtune::model::Model;
use webtune::session::model_files::read_source;
use webtune::session::{Base, Format, GenOptions, GgufDtype, Method, Prompt, Session, Settings};
use webtune::tokenize::Message;
use webtune::train::{LossMode, ScheduleKind};

use crate::train;

#[derive(Parser)]
#[command(name = "webtune", version, about = "Fine-tune small language models on the GPU (wgpu + WGSL)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fine-tune: one line per step, validation at intervals, the training state in
    /// OUT/state.safetensors and the trained model in OUT. With --resume, settings not
    /// given are taken from the checkpoint.
    Train(Box<TrainArgs>),
    /// Print the token ids of --text (with the chat template under --chat), or the
    /// trained / not-trained mask of a JSONL example (--data FILE [--line N]) as training
    /// prepares it (--max-len, --last-turn-only and --loss apply).
    Tokenize {
        #[arg(long)]
        model: String,
        #[arg(long, conflicts_with = "data")]
        text: Option<String>,
        /// Render --text as a user turn through the chat template, with the generation prompt.
        #[arg(long)]
        chat: bool,
        #[arg(long)]
        data: Option<PathBuf>,
        /// Which example of --data (1-based, counting examples).
        #[arg(long, default_value_t = 1)]
        line: usize,
        #[command(flatten)]
        s: SettingsArgs,
    },
    /// Generate text from --prompt (streamed), optionally with a PEFT adapter.
    Generate {
        #[arg(long)]
        model: String,
        /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        /// Put the prompt through the chat template as a user turn.
        #[arg(long)]
        chat: bool,
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// 0 is greedy.
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long)]
        top_p: Option<f32>,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Print each example's loss (one JSON object per line), then the batch loss.
    Score {
        /// A .gguf file, a Hugging Face folder, or a hub model id (`namespace/name[@revision]`;
        /// HF_ENDPOINT and HF_TOKEN are honoured).
        #[arg(long)]
        model: String,
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        s: SettingsArgs,
    },
    /// Write the gradient of the loss over the whole file (one accumulated batch) for every
    /// trainable parameter, under the Hugging Face names.
    Grads {
        #[arg(long)]
        model: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        s: SettingsArgs,
    },
    /// Write the run as a transformers + TRL + PEFT + accelerate project in --out (train.py,
    /// the data, accelerate configs, requirements.txt, README.md). Needs no GPU.
    ExportRun(Box<ExportRunArgs>),
    /// Time full fine-tuning or LoRA steps after warm-up: tokens/s, ms per step and per
    /// kernel, the device work per step, and the matmuls' GFLOP/s.
    Bench {
        /// A .gguf file, a Hugging Face folder, or a hub model id (`namespace/name[@revision]`).
        #[arg(long, conflicts_with = "preset")]
        model: Option<String>,
        /// Random weights in a real model's shape: smollm2-135m, smollm2-360m, qwen2.5-0.5b,
        /// qwen2.5-1.5b, llama3.2-1b, qwen3-0.6b, qwen3-1.7b, gemma3-270m, gemma3-1b, gpt2, tiny-llama.
        #[arg(long)]
        preset: Option<String>,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "per-example")]
        loss: LossMode,
        /// Skip the per-kernel profile (it submits and waits after every dispatch).
        #[arg(long)]
        no_profile: bool,
        /// full (default) or lora (adapters on a frozen base).
        #[arg(long, default_value = "full")]
        method: String,
        /// Under LoRA on a --model: how the frozen base stays on the GPU, as `train --base`
        /// (auto: a GGUF's blocks and f16/bf16 tensors as the file has them).
        #[arg(long, default_value = "auto")]
        base: Base,
        #[arg(long, default_value_t = 8)]
        lora_rank: usize,
        /// Comma-separated module names, or all-linear.
        #[arg(long, default_value = "all-linear")]
        lora_targets: String,
    },
}

/// The settings as flags; each one not given keeps its value (see `Settings`).
#[derive(Args, Default)]
pub struct SettingsArgs {
    /// lora (default: low-rank adapters on a frozen base) or full.
    #[arg(long)]
    pub method: Option<Method>,
    /// LoRA rank (default 8).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha: the adapter's output is scaled by alpha / rank (default 16).
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// LoRA dropout on the adapter's input (default 0).
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// Scale by alpha / sqrt(rank) (rsLoRA).
    #[arg(long)]
    rslora: bool,
    /// Comma-separated module names (default `all-linear`: every linear layer but the head).
    #[arg(long)]
    lora_targets: Option<String>,
    /// per-example (default), per-token or all-tokens.
    #[arg(long)]
    loss: Option<LossMode>,
    /// Optimizer steps in the run.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Passes over the training data (default 3).
    #[arg(long)]
    epochs: Option<u64>,
    /// Examples per optimizer step (default 8).
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches each batch is accumulated over (default 1).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Examples per forward/backward pass (default batch / grad-accum).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Peak learning rate (default 2e-4).
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warm-up steps (default 0).
    #[arg(long)]
    warmup: Option<u64>,
    /// constant, linear (default) or cosine.
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Cut examples to this many tokens, prompt tokens from the left first (default 1024,
    /// capped by the model); examples left with nothing to train on are dropped.
    #[arg(long)]
    max_len: Option<usize>,
    /// Pack short examples into rows of up to N tokens (no attention across examples);
    /// 0 (default) pads each example to the longest of its micro-batch.
    #[arg(long)]
    pack: Option<usize>,
    /// For chat data: train only the last assistant turn.
    #[arg(long)]
    last_turn_only: bool,
    /// Seed of the data order, the validation split and LoRA's init (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// AdamW weight decay on matrices (default 0).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Clip the global gradient norm to this; 0 turns clipping off (default 1).
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Hold out this share of --data for validation when no --valid is given (default 0).
    #[arg(long, alias = "valid-fraction")]
    val_share: Option<f64>,
    /// Validate on at most this many held-out examples (default 0: all).
    #[arg(long)]
    val_limit: Option<usize>,
    /// Validation loss every N steps (default: after the last step only).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Save every block's activations instead of re-running each block's forward in the
    /// backward (activation checkpointing, the default): faster, much more memory, the
    /// same results.
    #[arg(long)]
    no_recompute: bool,
    /// How the trained model is written: auto (default: peft for LoRA; for full
    /// fine-tuning merged over a Hugging Face base, gguf over a GGUF base), peft, merged (a
    /// Hugging Face folder; needs a Hugging Face base) or gguf (one file, its matrices in
    /// --gguf-type).
    #[arg(long)]
    format: Option<Format>,
    /// The matrices' type in a GGUF export: f16 (default), f32, or q8_0 (matrices whose
    /// rows are not whole 32-value blocks stay F16, as llama.cpp's converter does).
    #[arg(long)]
    gguf_type: Option<GgufDtype>,
    /// How LoRA keeps the frozen base on the GPU: auto (default: a GGUF's blocks and
    /// f16/bf16 tensors as the file has them), f32, or quantized on load into f16, bf16,
    /// q8_0, q4_0 or q4_k (q4_0 where a row cannot hold 256-value blocks).
    #[arg(long)]
    base: Option<Base>,
}

impl SettingsArgs {
    /// `base` with the flags that were given on top, checked.
    pub fn apply(&self, base: &Settings) -> Result<Settings> {
        let mut s = base.clone();
        macro_rules! set {
            ($($f:ident),+) => { $(if let Some(x) = self.$f.clone() { s.$f = x; })+ };
        }
        set!(method, lora_rank, lora_alpha, lora_dropout, loss, batch, grad_accum, lr, warmup, schedule);
        set!(
            max_len,
            pack,
            seed,
            weight_decay,
            max_grad_norm,
            val_share,
            val_limit,
            eval_every,
            format,
            base,
            gguf_type
        );
        if self.micro_batch.is_some() {
            s.micro_batch = self.micro_batch;
        }
        if let Some(n) = self.steps {
            s.steps = Some(n);
        }
        if let Some(e) = self.epochs {
            s.steps = None;
            s.epochs = e;
        }
        if let Some(t) = &self.lora_targets {
            s.lora_targets = t.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
        }
        s.rslora |= self.rslora;
        s.last_turn_only |= self.last_turn_only;
        s.recompute &= !self.no_recompute;
        s.check()?;
        Ok(s)
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// The base model (also when resuming): a .gguf file, a Hugging Face folder or a hub id.
    #[arg(long)]
    pub model: String,
    /// Training data, JSONL: {"prompt","completion"}, {"messages"}, {"text"} or pre-tokenized.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation data, JSONL (instead of --val-share).
    #[arg(long, conflicts_with = "val_share")]
    pub valid: Option<PathBuf>,
    /// Continue training a PEFT adapter folder (adapter_config.json +
    /// adapter_model.safetensors): its rank, alpha and targets replace the --lora-* flags.
    #[arg(long, conflicts_with = "resume")]
    pub adapter: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint (OUT/state.safetensors of an earlier run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write OUT/state.safetensors every N steps (it is always written at the end).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Stop once this many steps are done, saving the state (to continue with --resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    #[command(flatten)]
    pub s: SettingsArgs,
}

#[derive(Args)]
pub struct ExportRunArgs {
    /// The base model: a hub id, a Hugging Face folder, or a .gguf file (its Hugging Face
    /// source when known; else the project says to fill it in).
    #[arg(long)]
    pub model: String,
    /// Training data, JSONL (copied as it is).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluation data, JSONL.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// A PEFT adapter folder to continue training from.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Take the settings of a saved state (OUT/state.safetensors); flags given go on top.
    #[arg(long)]
    pub from_state: Option<PathBuf>,
    /// The project folder.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub s: SettingsArgs,
}

/// `webtune export-run`.
fn export_run(a: &ExportRunArgs) -> Result<()> {
    use webtune::session::export_run::{export_run, state_settings, ExportInput, ExportModel};
    let base = match &a.from_state {
        Some(p) => state_settings(&std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e))?)?,
        None => Settings::default(),
    };
    let settings = a.s.apply(&base)?;
    let model = ExportModel::from_arg(&a.model);
    let train = read_text(&a.data)?;
    let eval = a.valid.as_deref().map(read_text).transpose()?;
    let adapter = a.adapter.as_ref().map(|p| std::path::absolute(p).unwrap_or(p.clone()).display().to_string());
    let input = ExportInput {
        settings: &settings,
        model: &model,
        train: &train,
        eval: eval.as_deref(),
        adapter: adapter.as_deref(),
    };
    for (name, bytes) in export_run(&input)? {
        let path = a.out.join(&name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(path.display().to_string(), e))?;
    }
    if let Some(n) = &model.note {
        eprintln!("note: {n}");
    }
    eprintln!("wrote {}: accelerate launch --config_file accelerate/single_gpu.yaml train.py", a.out.display());
    Ok(())
}

/// Hub download progress on stderr: one line per file and about every 10% (or 64 MiB
/// when the size is unknown).
fn progress_printer() -> impl FnMut(Progress) {
    let mut last: Option<(String, u64)> = None;
    move |p: Progress| {
        let step = p.total.map(|t| (t / 10).max(1)).unwrap_or(64 << 20);
        let fresh = last.as_ref().is_none_or(|(f, _)| f != p.file);
        let due = last.as_ref().is_some_and(|(_, d)| p.done / step > *d / step);
        if fresh || due || p.total == Some(p.done) {
            match p.total {
                Some(t) => eprintln!("fetch {}: {} / {} bytes", p.file, p.done, t),
                None => eprintln!("fetch {}: {} bytes", p.file, p.done),
            }
        }
        last = Some((p.file.to_string(), p.done));
    }
}

/// Load `--model` (a .gguf file, a Hugging Face folder, or a hub id) into the session,
/// with the LoRA of its settings.
pub async fn load(session: &mut Session<'_>, arg: &str) -> Result<()> {
    let source = ModelSource::parse(arg)?;
    let files = read_source(&source, &Hub::from_env(), &mut progress_printer()).await?;
    session.load_files(arg, &files)?;
    Ok(())
}

/// The model alone (bench), loaded as a run with `settings` would load it (its LoRA and
/// base precision).
pub async fn load_model(gpu: &Gpu, arg: &str, settings: Settings) -> Result<Model> {
    let mut s = Session::new(gpu, settings)?;
    load(&mut s, arg).await?;
    s.drop_run();
    s.into_model().ok_or_else(|| Error::Usage(format!("{arg}: no model")))
}

pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))
}

/// Read a JSONL file into the session's training data, warnings on stderr.
pub fn set_data(session: &mut Session<'_>, path: &Path) -> Result<()> {
    let name = path.display().to_string();
    let summary = session.set_data(&name, &read_text(path)?)?;
    if let Some(w) = &summary.warning {
        eprintln!("{name}: {w}");
    }
    Ok(())
}

/// Settings for commands that read data as it is (no cut): the model's own maximum.
fn whole_examples(s: &SettingsArgs) -> Result<Settings> {
    let base = Settings { method: Method::Full, max_len: usize::MAX, ..Default::default() };
    s.apply(&base)
}

pub async fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::ExportRun(a) = &cli.cmd {
        return export_run(a);
    }
    let gpu = Gpu::new().await?;
    match cli.cmd {
        Cmd::Tokenize { model, text, chat, data, line, s } => {
            let mut session = Session::new(&gpu, s.apply(&Settings { method: Method::Full, ..Default::default() })?)?;
            load(&mut session, &model).await?;
            let tok = session.tokenizer()?;
            match (text, data) {
                (Some(text), _) => {
                    let text = if chat {
                        tok.require_chat_template()?.render(&[Message::new("user", text)], true)?
                    } else {
                        text
                    };
                    let ids = tok.encode(&text, !chat)?;
                    let tokens: Vec<String> = ids.iter().map(|&i| tok.token_text(i)).collect();
                    println!("{}", serde_json::json!({"ids": ids, "tokens": tokens, "count": ids.len()}));
                }
                (None, Some(data)) => {
                    set_data(&mut session, &data)?;
                    let p = session.preview(line.max(1) - 1)?;
                    let trained = p.tokens.iter().filter(|t| t.trained).count();
                    println!("{} ({} tokens, {trained} trained; trained runs in [[...]])", p.origin, p.tokens.len());
                    let mut out = String::new();
                    let mut open = false;
                    for t in &p.tokens {
                        if t.trained != open {
                            out.push_str(if t.trained { "[[" } else { "]]" });
                            open = t.trained;
                        }
                        out.push_str(t.text.as_deref().unwrap_or(""));
                    }
                    if open {
                        out.push_str("]]");
                    }
                    println!("{out}");
                }
                (None, None) => return Err(Error::Usage("tokenize needs --text or --data".into())),
            }
        }
        Cmd::Generate { model, adapter, prompt, chat, max_new_tokens, temperature, top_p, top_k, seed } => {
            let files = adapter.as_deref().map(train::read_adapter).transpose()?;
            let mut session = Session::new(&gpu, Settings { method: Method::Full, ..Default::default() })?;
            if let Some(f) = &files {
                session.adopt_adapter_config(f)?;
            }
            load(&mut session, &model).await?;
            if let Some(f) = &files {
                session.import_adapter(f)?;
            }
            let d = GenOptions::default();
            let opts = GenOptions {
                max_new_tokens: max_new_tokens.unwrap_or(d.max_new_tokens),
                temperature: temperature.unwrap_or(d.temperature),
                top_p: top_p.unwrap_or(d.top_p),
                top_k: top_k.unwrap_or(d.top_k),
                seed: seed.unwrap_or(d.seed),
                chat,
            };
            let t0 = std::time::Instant::now();
            let g = session
                .generate(Prompt::Text(prompt), &opts, |piece| {
                    print!("{piece}");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    true
                })
                .await?;
            println!();
            let dt = t0.elapsed().as_secs_f64();
            eprintln!("{} tokens in {dt:.2} s ({:.1} tokens/s), stop: {}", g.tokens, g.tokens as f64 / dt, g.stop);
        }
        Cmd::Score { model, data, s } => {
            let mut session = Session::new(&gpu, whole_examples(&s)?)?;
            load(&mut session, &model).await?;
            set_data(&mut session, &data)?;
            let items = session.data().map(|d| d.items.clone()).unwrap_or_default();
            let examples: Vec<_> = items.iter().map(|i| i.example.clone()).collect();
            let (scores, total) = session.score_examples(&examples).await?;
            for (i, (sc, e)) in scores.iter().zip(&examples).enumerate() {
                println!(
                    "{}",
                    serde_json::json!({"example": i, "origin": e.origin, "tokens": sc.tokens, "targets": sc.targets,
                        "nll_sum": sc.sum_nll, "loss": sc.mean_nll})
                );
            }
            let targets: usize = scores.iter().map(|s| s.targets).sum();
            let mode = session.settings().loss.to_string();
            println!(
                "{}",
                serde_json::json!({"loss": total, "mode": mode, "examples": examples.len(), "targets": targets})
            );
        }
        Cmd::Grads { model, data, out, s } => {
            let mut session = Session::new(&gpu, whole_examples(&s)?)?;
            load(&mut session, &model).await?;
            set_data(&mut session, &data)?;
            let (loss, grads) = train::gradients(&mut session).await?;
            train::write_safetensors(&out, &grads)?;
            let mode = session.settings().loss;
            eprintln!("loss {loss:.6} ({mode}); wrote {} gradients to {}", grads.len(), out.display());
        }
        Cmd::Train(args) => train::train(&gpu, *args).await?,
        Cmd::ExportRun(_) => return Err(Error::Usage("export-run is handled before the GPU is opened".into())),
        Cmd::Bench {
            model,
            preset,
            batch,
            seq,
            steps,
            warmup,
            loss,
            no_profile,
            method,
            lora_rank,
            lora_targets,
            base,
        } => {
            let lora = crate::bench::lora_config(&method, lora_rank, &lora_targets)?;
            let shape = crate::bench::Shape { batch, seq, steps, warmup, loss, profile: !no_profile };
            crate::bench::bench(&gpu, model, preset, shape, lora, base).await?;
        }
    }
    Ok(())
}
