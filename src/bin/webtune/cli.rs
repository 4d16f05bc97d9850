use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use webtune::data::DataOptions;
use webtune::error::{Error, Result};
use webtune::export::gguf::{export_gguf, GgufDtype, GgufExport};
use webtune::export::merged::export_merged;
use webtune::export::peft::export_adapter;
use webtune::export::peft::{import_adapter, parse_adapter_config, AdapterFiles};
use webtune::gpu::{Gpu, Profile};
use webtune::load::hub::{Hub, Progress};
use webtune::load::GgufInfo;
use webtune::load::{Loaded, ModelSource};
use webtune::model::memory;
use webtune::model::presets::{preset, random_init};
use webtune::model::LoraConfig;
use webtune::model::Model;
use webtune::model::{generate, GenerateConfig, Sampling};
use webtune::rng::Rng;
use webtune::tokenize::{Message, Tokenizer};
use webtune::train::run::{split_validation, truncate};
use webtune::train::{
    AdamW, Checkpoint, CheckpointError, Example, Length, LossMode, Run, RunConfig, ScheduleKind, StepReport,
    TrainConfig, Trainer,
};

#[derive(Parser)]
#[command(name = "webtune", version, about = "Fine-tune small language models on the GPU (wgpu + WGSL)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fine-tune: one line per step, validation at intervals, the training state in
    /// OUT/state.safetensors and the trained model in OUT (for full fine-tuning: a Hugging
    /// Face folder). With --resume, settings not given are taken from the checkpoint.
    Train(Box<TrainArgs>),
    /// Print the token ids of --text (with the chat template under --chat), or the
    /// trained / not-trained mask of a JSONL example (--data FILE [--line N]).
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
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print each example's loss (one JSON object per line), then the batch loss.
    Score {
        /// A .gguf file, a Hugging Face folder, or a hub model id (`namespace/name[@revision]`;
        /// HF_ENDPOINT and HF_TOKEN are honoured).
        #[arg(long)]
        model: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "per-example")]
        loss: LossMode,
        #[arg(long, default_value_t = 8)]
        micro_batch: usize,
    },
    /// Write the gradient of the loss over the whole file (one accumulated batch) for every
    /// trainable parameter, under the Hugging Face names.
    Grads {
        /// A .gguf file, a Hugging Face folder, or a hub model id (`namespace/name[@revision]`).
        #[arg(long)]
        model: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "per-example")]
        loss: LossMode,
        #[arg(long, default_value_t = 8)]
        micro_batch: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time full fine-tuning steps after warm-up: tokens/s, ms per step and per kernel,
    /// and the matmuls' GFLOP/s.
    Bench {
        /// A .gguf file, a Hugging Face folder, or a hub model id (`namespace/name[@revision]`).
        #[arg(long, conflicts_with = "preset")]
        model: Option<String>,
        /// Random weights in a real model's shape: smollm2-135m, qwen2.5-0.5b, gpt2, tiny-llama.
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
    },
}

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    /// Every parameter (full fine-tuning).
    Full,
    /// Low-rank adapters on a frozen base (see --lora-*).
    Lora,
}

/// How the trained model is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The default: `peft` for LoRA, `merged` for full fine-tuning.
    Auto,
    /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors); LoRA only.
    Peft,
    /// A Hugging Face folder (config.json + model.safetensors, F32) with adapters merged in;
    /// needs a Hugging Face base (folder or hub id).
    Merged,
    /// One GGUF file (F16 matrices, F32 norms) with the tokenizer metadata, adapters merged in.
    Gguf,
}

#[derive(Args)]
struct TrainArgs {
    /// The base model (also when resuming): a .gguf file, a Hugging Face folder or a hub id.
    #[arg(long)]
    model: String,
    /// Training data, JSONL: {"prompt","completion"}, {"messages"}, {"text"} or pre-tokenized.
    #[arg(long)]
    data: PathBuf,
    /// Validation data, JSONL.
    #[arg(long, conflicts_with = "valid_fraction")]
    valid: Option<PathBuf>,
    /// Hold out this fraction of --data for validation (chosen by --seed).
    #[arg(long)]
    valid_fraction: Option<f64>,
    #[arg(long, value_enum, default_value = "full")]
    method: Method,
    /// Continue training a PEFT adapter folder (adapter_config.json +
    /// adapter_model.safetensors): its rank, alpha and targets replace the --lora-* flags.
    #[arg(long, conflicts_with = "resume")]
    adapter: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA alpha (the adapter's output is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f32,
    /// LoRA dropout on the adapter's input.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// Scale by alpha / sqrt(rank) (rsLoRA).
    #[arg(long)]
    rslora: bool,
    /// Comma-separated module names (default `all-linear`: every linear layer but the head).
    #[arg(long)]
    lora_targets: Option<String>,
    /// For chat data: train only the last assistant turn.
    #[arg(long)]
    last_turn_only: bool,
    /// Pack short examples into rows of up to N tokens (no attention across examples);
    /// 0 pads each example to the longest of its micro-batch.
    #[arg(long, default_value_t = 0)]
    pack: usize,
    /// Save every block's activations instead of re-running each block's forward in the
    /// backward (activation checkpointing, the default): faster, much more memory, the
    /// same results.
    #[arg(long)]
    no_recompute: bool,
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
    /// Peak learning rate (default 5e-5).
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warm-up steps (default 0).
    #[arg(long)]
    warmup: Option<u64>,
    /// constant, linear (default) or cosine.
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Cut examples to this many tokens (default: the model's maximum); examples left with
    /// nothing to train on are dropped.
    #[arg(long)]
    max_len: Option<usize>,
    /// Seed of the data order and the validation split (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// AdamW weight decay on matrices (default 0).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Clip the global gradient norm to this; 0 turns clipping off (default 1).
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Validation loss every N steps (default: after the last step only).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue from a checkpoint (OUT/state.safetensors of an earlier run).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write OUT/state.safetensors every N steps (it is always written at the end).
    #[arg(long)]
    save_every: Option<u64>,
    /// Stop once this many steps are done, saving the state (to continue with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
}

/// `--model`: a .gguf file, a Hugging Face folder, or a hub model id (fetched with
/// progress on stderr), with LoRA adapters when `lora` is given.
async fn load(gpu: &Gpu, arg: &str, lora: Option<&LoraConfig>) -> Result<Loaded> {
    let source = ModelSource::parse(arg)?;
    let hub = Hub::from_env();
    let mut last: Option<(String, u64)> = None;
    let mut progress = |p: Progress| {
        // One line per file and about every 10% (or 64 MiB when the size is unknown).
        let step = p.total.map(|t| (t / 10).max(1)).unwrap_or(64 << 20);
        let fresh = last.as_ref().is_none_or(|(f, _)| f != p.file);
        let due = last.as_ref().is_some_and(|(_, d)| p.done / step > *d / step);
        let done = p.total == Some(p.done);
        if fresh || due || done {
            match p.total {
                Some(t) => eprintln!("fetch {}: {} / {} bytes", p.file, p.done, t),
                None => eprintln!("fetch {}: {} bytes", p.file, p.done),
            }
        }
        last = Some((p.file.to_string(), p.done));
    };
    source.load_with(gpu, &hub, lora, &mut progress).await
}

async fn load_model(gpu: &Gpu, arg: &str) -> Result<Model> {
    Ok(load(gpu, arg, None).await?.model)
}

/// A JSONL file to examples: text formats through the model's tokenizer (and chat
/// template), pre-tokenized lines without one. Truncation is reported on stderr.
fn read_examples(
    path: &Path,
    tok: Option<&Tokenizer>,
    max_len: Option<usize>,
    last_turn_only: bool,
) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    let file = path.display().to_string();
    match tok {
        Some(tok) => {
            let opts = DataOptions { max_len, last_turn_only, ..Default::default() };
            let (examples, report) = webtune::data::load_jsonl(tok, &file, &text, &opts)?;
            if let Some(w) = report.warning() {
                eprintln!("{file}: {w}");
            }
            Ok(examples)
        }
        None => webtune::data::parse_tokenized_jsonl(&file, &text),
    }
}

pub async fn run() -> Result<()> {
    let cli = Cli::parse();
    let gpu = Gpu::new().await?;
    match cli.cmd {
        Cmd::Tokenize { model, text, chat, data, line } => {
            let l = load(&gpu, &model, None).await?;
            let tok = l.tokenizer.as_ref().ok_or_else(|| Error::Usage(format!("{model} has no tokenizer")))?;
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
                    let examples = read_examples(&data, Some(tok), None, false)?;
                    let ex = examples
                        .get(line.max(1) - 1)
                        .ok_or_else(|| Error::Usage(format!("{} has {} examples", data.display(), examples.len())))?;
                    println!(
                        "{} ({} tokens, {} trained; trained runs in [[...]])",
                        ex.origin,
                        ex.ids.len(),
                        ex.trained.iter().filter(|&&t| t).count()
                    );
                    println!("{}", webtune::data::preview_string(tok, ex));
                }
                (None, None) => return Err(Error::Usage("tokenize needs --text or --data".into())),
            }
        }
        Cmd::Generate { model, adapter, prompt, chat, max_new_tokens, temperature, top_p, top_k, seed } => {
            let files = adapter.as_deref().map(read_adapter).transpose()?;
            let lora = files.as_ref().map(|f| parse_adapter_config(&f.config_json)).transpose()?;
            let l = load(&gpu, &model, lora.as_ref()).await?;
            if let Some(f) = &files {
                import_adapter(&gpu, &l.model, f)?;
            }
            let tok = l.tokenizer.as_ref().ok_or_else(|| Error::Usage(format!("{model} has no tokenizer")))?;
            let text =
                if chat { tok.require_chat_template()?.render(&[Message::new("user", prompt)], true)? } else { prompt };
            let ids = tok.encode(&text, !chat)?;
            let cfg = GenerateConfig {
                max_new_tokens,
                sampling: Sampling { temperature, top_k, top_p, seed },
                stop_ids: tok.eos_ids(),
                capacity: None,
            };
            let mut out: Vec<u32> = Vec::new();
            let mut shown = 0usize;
            let t0 = Instant::now();
            let g = generate(&gpu, &l.model, &ids, &cfg, |id| {
                out.push(id);
                // Print what decodes cleanly so far (a character may span tokens).
                if let Ok(s) = tok.decode_skip_special(&out) {
                    if s.len() > shown && !s.ends_with('\u{fffd}') {
                        print!("{}", &s[shown..]);
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                        shown = s.len();
                    }
                }
                true
            })
            .await?;
            println!();
            let dt = t0.elapsed().as_secs_f64();
            eprintln!(
                "{} tokens in {:.2} s ({:.1} tokens/s), stop: {:?}",
                g.tokens.len(),
                dt,
                g.tokens.len() as f64 / dt,
                g.stop
            );
        }
        Cmd::Score { model, data, loss, micro_batch } => {
            let l = load(&gpu, &model, None).await?;
            let examples = read_examples(&data, l.tokenizer.as_ref(), None, false)?;
            let mut t = Trainer::new(&gpu, l.model, TrainConfig { micro_batch, ..Default::default() })?;
            let (scores, total) = t.score(&examples, loss).await?;
            for (i, (s, e)) in scores.iter().zip(&examples).enumerate() {
                println!(
                    "{}",
                    serde_json::json!({"example": i, "origin": e.origin, "tokens": s.tokens, "targets": s.targets,
                        "nll_sum": s.sum_nll, "loss": s.mean_nll})
                );
            }
            let targets: usize = scores.iter().map(|s| s.targets).sum();
            println!(
                "{}",
                serde_json::json!({"loss": total, "mode": loss.to_string(), "examples": examples.len(), "targets": targets})
            );
        }
        Cmd::Grads { model, data, loss, micro_batch, out } => {
            let l = load(&gpu, &model, None).await?;
            let examples = read_examples(&data, l.tokenizer.as_ref(), None, false)?;
            let cfg = TrainConfig { loss, micro_batch, ..Default::default() };
            let mut t = Trainer::new(&gpu, l.model, cfg)?;
            let l = t.accumulate(&examples).await?;
            let grads = t.read_grads().await?;
            write_safetensors(&out, &grads)?;
            eprintln!("loss {l:.6} ({loss}); wrote {} gradients to {}", grads.len(), out.display());
        }
        Cmd::Train(args) => train(&gpu, *args).await?,
        Cmd::Bench { model, preset: name, batch, seq, steps, warmup, loss, no_profile } => {
            bench(&gpu, model, name, batch, seq, steps, warmup, loss, !no_profile).await?;
        }
    }
    Ok(())
}

/// The run's settings: the checkpoint's when resuming (else the defaults, transformers'
/// where it has one), with the flags given on top.
fn run_config(a: &TrainArgs, resumed: Option<&Checkpoint>) -> Result<RunConfig> {
    let mut c = match resumed {
        Some(ck) => ck.run_config()?,
        None => RunConfig {
            loss: LossMode::PerExample,
            adamw: AdamW { lr: 5e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 },
            batch: 8,
            grad_accum: 1,
            micro_batch: None,
            length: Length::Epochs(3),
            schedule: ScheduleKind::Linear,
            warmup: 0,
            seed: 42,
            shuffle: true,
            eval_every: 0,
        },
    };
    if let Some(x) = a.loss {
        c.loss = x;
    }
    if let Some(n) = a.steps {
        c.length = Length::Steps(n);
    }
    if let Some(e) = a.epochs {
        c.length = Length::Epochs(e);
    }
    if let Some(x) = a.batch {
        c.batch = x;
    }
    if let Some(x) = a.grad_accum {
        c.grad_accum = x;
    }
    if a.micro_batch.is_some() {
        c.micro_batch = a.micro_batch;
    }
    if let Some(x) = a.lr {
        c.adamw.lr = x;
    }
    if let Some(x) = a.warmup {
        c.warmup = x;
    }
    if let Some(x) = a.schedule {
        c.schedule = x;
    }
    if let Some(x) = a.seed {
        c.seed = x;
    }
    if let Some(x) = a.weight_decay {
        c.adamw.weight_decay = x;
    }
    if let Some(x) = a.max_grad_norm {
        c.adamw.max_grad_norm = x;
    }
    if let Some(x) = a.eval_every {
        c.eval_every = x;
    }
    c.check()?;
    Ok(c)
}

/// A PEFT adapter folder's two files.
fn read_adapter(dir: &Path) -> Result<AdapterFiles> {
    let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| Error::io(dir.join(n).display().to_string(), e));
    Ok(AdapterFiles {
        config_json: String::from_utf8(read("adapter_config.json")?)
            .map_err(|_| Error::Config(format!("{}/adapter_config.json is not UTF-8", dir.display())))?,
        safetensors: read("adapter_model.safetensors")?,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    // Through a temporary file, so an interrupted write never leaves half a checkpoint.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display().to_string(), e))
}

fn print_step(r: &StepReport) {
    println!(
        "step {}/{} epoch {:.2} loss {:.6} lr {:.3e} grad_norm {:.4} tokens/s {:.1}",
        r.step, r.total_steps, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens_per_s
    );
    if let Some(v) = r.valid_loss {
        println!("step {} valid_loss {v:.6}", r.step);
    }
}

async fn train(gpu: &Gpu, a: TrainArgs) -> Result<()> {
    let resume_bytes = match &a.resume {
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e))?),
        None => None,
    };
    let ck = resume_bytes.as_deref().map(Checkpoint::parse).transpose()?;
    let cfg = run_config(&a, ck.as_ref())?;
    let adapter = a.adapter.as_deref().map(read_adapter).transpose()?;
    if adapter.is_some() && a.method != Method::Lora {
        return Err(Error::Usage("--adapter continues a LoRA adapter: add --method lora".into()));
    }
    let lora = match (a.method, &adapter) {
        (Method::Full, _) => None,
        (Method::Lora, Some(files)) => Some(LoraConfig { seed: cfg.seed, ..parse_adapter_config(&files.config_json)? }),
        (Method::Lora, None) => Some(LoraConfig {
            rank: a.lora_rank,
            alpha: a.lora_alpha,
            dropout: a.lora_dropout,
            rslora: a.rslora,
            targets: match &a.lora_targets {
                Some(t) => t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                None => vec![webtune::model::lora::ALL_LINEAR.to_string()],
            },
            seed: cfg.seed,
        }),
    };
    let loaded = load(gpu, &a.model, lora.as_ref()).await?;
    let Loaded { model, tokenizer, config_json, gguf } = loaded;
    if let Some(files) = &adapter {
        // A wrong or missing key is an error here, never a silently fresh adapter.
        import_adapter(gpu, &model, files)?;
        eprintln!("continuing the adapter in {}", a.adapter.as_ref().unwrap().display());
    }
    let max_len = a.max_len.unwrap_or(model.max_seq()).min(model.max_seq());
    let prepare = |examples: Vec<Example>, what: &str| {
        let (kept, dropped) = truncate(examples, max_len, cfg.loss);
        if dropped > 0 {
            eprintln!(
                "{what}: dropped {dropped} example(s) with nothing to train on after cutting to {max_len} tokens"
            );
        }
        kept
    };
    let tok = tokenizer.as_ref();
    let read = |p: &Path| read_examples(p, tok, Some(max_len), a.last_turn_only);
    let data = prepare(read(&a.data)?, &a.data.display().to_string());
    let (train, valid) = match (&a.valid, a.valid_fraction) {
        (Some(v), _) => (data, prepare(read(v)?, &v.display().to_string())),
        (None, Some(f)) => split_validation(data, f, cfg.seed)?,
        (None, None) => (data, Vec::new()),
    };
    let trainer =
        Trainer::new(gpu, model, TrainConfig { pack: a.pack, recompute: !a.no_recompute, ..Default::default() })?;
    eprintln!(
        "{}: {} parameters ({} trainable); {} training and {} validation examples; {} steps of batch {} \
         (micro-batch {}), {} schedule from lr {:e}, {} warm-up steps",
        a.model,
        trainer.model.params.num_params(),
        trainer.model.params.num_trainable(),
        train.len(),
        valid.len(),
        cfg.total_steps(train.len()),
        cfg.batch,
        cfg.micro(),
        cfg.schedule,
        cfg.adamw.lr,
        cfg.warmup
    );
    print_memory(
        &trainer,
        cfg.micro(),
        train.iter().chain(&valid).map(|e| e.ids.len()).max().unwrap_or(1).max(a.pack),
    )?;
    let mut run = Run::new(trainer, cfg, train, valid)?;
    if let Some(ck) = &ck {
        run.restore(ck).map_err(|e| match e {
            Error::Checkpoint(CheckpointError::Mismatch(d)) if d.iter().any(|x| x.what == "the training set") => {
                Error::Usage(format!(
                    "{}; resume with the same --data, --valid-fraction and --max-len as the original run",
                    Error::Checkpoint(CheckpointError::Mismatch(d))
                ))
            }
            e => e,
        })?;
        eprintln!("resumed from {} at step {}", a.resume.as_ref().unwrap().display(), run.step());
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(a.out.display().to_string(), e))?;
    let state_path = a.out.join("state.safetensors");
    loop {
        if a.stop_after.is_some_and(|s| run.step() >= s) {
            break;
        }
        let Some(r) = run.next_step().await? else { break };
        print_step(&r);
        if a.save_every.is_some_and(|n| n > 0 && r.step.is_multiple_of(n)) && !run.is_done() {
            write_file(&state_path, &run.save().await?)?;
        }
    }
    write_file(&state_path, &run.save().await?)?;
    eprintln!("step {}: wrote {}", run.step(), state_path.display());
    if run.is_done() {
        export(gpu, &run, &a, config_json.as_deref(), gguf.as_ref()).await?;
    }
    Ok(())
}

/// The GPU memory training needs, by kind, for micro-batches of `micro` sequences of `seq`
/// tokens (the workspace's worst case: every token carries loss).
fn print_memory(t: &Trainer, micro: usize, seq: usize) -> Result<()> {
    let m = &t.model;
    let e = memory::estimate_with(&m.cfg, m.lora.as_ref(), micro, seq, t.workspace_opts(false))?;
    eprintln!("GPU memory for micro-batches of {micro} x {seq} tokens: {e}");
    Ok(())
}

/// Write the trained model in the chosen format.
async fn export(
    gpu: &Gpu,
    run: &Run<'_>,
    a: &TrainArgs,
    config_json: Option<&str>,
    gguf: Option<&GgufInfo>,
) -> Result<()> {
    let model = &run.trainer.model;
    let out = &a.out;
    let format = match (a.format, a.method) {
        (Format::Auto, Method::Lora) => Format::Peft,
        (Format::Auto, Method::Full) => Format::Merged,
        (f, _) => f,
    };
    match format {
        Format::Peft => {
            if a.method != Method::Lora {
                return Err(Error::Usage("--format peft needs --method lora".into()));
            }
            let files = export_adapter(gpu, model, &a.model).await?;
            write_file(&out.join("adapter_config.json"), files.config_json.as_bytes())?;
            write_file(&out.join("adapter_model.safetensors"), &files.safetensors)?;
            eprintln!("wrote the PEFT adapter to {} (adapter_config.json, adapter_model.safetensors)", out.display());
        }
        Format::Merged => {
            let config = config_json.ok_or_else(|| {
                Error::Usage("--format merged writes a Hugging Face folder and needs a Hugging Face base (folder or hub id); use --format gguf for a GGUF base".into())
            })?;
            let files = export_merged(gpu, model, config).await?;
            write_file(&out.join("config.json"), files.config_json.as_bytes())?;
            write_file(&out.join("model.safetensors"), &files.safetensors)?;
            eprintln!("wrote the trained model to {} (config.json, model.safetensors)", out.display());
        }
        Format::Gguf => {
            let opts = GgufExport {
                dtype: GgufDtype::F16,
                name: "webtune",
                tokenizer: gguf.map(|g| &g.tokenizer),
                chat_template: gguf.and_then(|g| g.chat_template.as_deref()),
            };
            if opts.tokenizer.is_none() {
                eprintln!("note: the base has no GGUF tokenizer metadata; the file loads here but llama.cpp needs a tokenizer");
            }
            let bytes = export_gguf(gpu, model, &opts).await?;
            let path = out.join("model.gguf");
            write_file(&path, &bytes)?;
            eprintln!("wrote the trained model to {}", path.display());
        }
        Format::Auto => unreachable!(),
    }
    Ok(())
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, shape, data)| {
            let v = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| Error::Usage(format!("{n}: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

#[allow(clippy::too_many_arguments)]
async fn bench(
    gpu: &Gpu,
    model: Option<String>,
    name: Option<String>,
    batch: usize,
    seq: usize,
    steps: usize,
    warmup: usize,
    loss: LossMode,
    profile: bool,
) -> Result<()> {
    let (model, label) = match (model, name) {
        (Some(m), _) => (load_model(gpu, &m).await?, m),
        (None, Some(n)) => (Model::new(gpu, preset(&n)?, random_init(0))?, format!("preset {n}")),
        (None, None) => (Model::new(gpu, preset("smollm2-135m")?, random_init(0))?, "preset smollm2-135m".into()),
    };
    if seq < 2 || seq > model.max_seq() {
        return Err(Error::Usage(format!("--seq must be between 2 and {}", model.max_seq())));
    }
    let vocab = model.cfg.vocab as u64;
    let mut rng = Rng::new(1);
    // Random tokens; the second half of each sequence is the answer (SFT-like).
    let examples: Vec<Example> = (0..batch)
        .map(|i| {
            let ids = (0..seq).map(|_| (rng.next_u64() % vocab) as u32).collect();
            Example::prompt_answer(ids, seq / 2, format!("bench:{i}"))
        })
        .collect();
    println!(
        "model: {label} ({} parameters, {:.1} MiB for weights, grads and AdamW)",
        model.params.num_params(),
        model.params.gpu_bytes() as f64 / 1048576.0
    );
    println!("adapter: {} ({}, {})", gpu.info.name, gpu.info.backend, gpu.info.device_type);
    println!("batch {batch} x seq {seq}, loss {loss}, full fine-tuning, AdamW");
    let cfg = TrainConfig { loss, micro_batch: batch, ..Default::default() };
    let mut t = Trainer::new(gpu, model, cfg)?;
    for _ in 0..warmup {
        t.step(&examples).await?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        t.step(&examples).await?;
    }
    let dt = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    let tokens = batch * seq;
    println!(
        "step: {:.1} ms, {:.1} tokens/s ({} timed steps after {} warm-up)",
        dt * 1e3,
        tokens as f64 / dt,
        steps,
        warmup
    );
    if profile {
        t.profile = Some(Profile::default());
        t.step(&examples).await?;
        let p = t.profile.take().unwrap();
        print_profile(&p);
    }
    Ok(())
}

fn print_profile(p: &Profile) {
    let total: f64 = p.entries.values().map(|e| e.seconds).sum();
    let mut rows: Vec<_> = p.entries.iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    println!("\nper kernel (one step, each dispatch submitted and waited for alone: {:.1} ms in all)", total * 1e3);
    println!("{:<36} {:>6} {:>10} {:>6} {:>10} {:>9}", "kernel", "calls", "ms", "%", "GFLOP/s", "GB/s");
    for (name, e) in rows {
        println!(
            "{:<36} {:>6} {:>10.2} {:>6.1} {:>10.2} {:>9.2}",
            name,
            e.calls,
            e.seconds * 1e3,
            100.0 * e.seconds / total,
            e.flops as f64 / e.seconds / 1e9,
            e.bytes as f64 / e.seconds / 1e9
        );
    }
    let mm = p.entries.get("matmul.matmul_forward");
    if let Some(e) = mm {
        println!(
            "\nmatmuls: {:.2} GFLOP in {:.1} ms = {:.2} GFLOP/s",
            e.flops as f64 / 1e9,
            e.seconds * 1e3,
            e.flops as f64 / e.seconds / 1e9
        );
    }
}
