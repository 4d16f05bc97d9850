use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use webtune::error::{Error, Result};
use webtune::gpu::{Gpu, Profile};
use webtune::load::hub::{Hub, Progress};
use webtune::load::ModelSource;
use webtune::model::presets::{preset, random_init};
use webtune::model::Model;
use webtune::rng::Rng;
use webtune::train::checkpoint::export_hf_safetensors;
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
    // Lora: adapters on a frozen base (colleague's work: add the variant here, build the
    // model with adapters in `train`, and its export in `export`).
}

/// How the trained model is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A Hugging Face folder: the input's config.json + model.safetensors (F32, HF names).
    Hf,
    // Peft (adapter_config.json + adapter_model.safetensors), Merged, Gguf: to come.
    // Gguf: `webtune::export::gguf::export_gguf` is ready; it needs a GgufTokenizer (from a GGUF
    // input, or tokenizer.json converted), which an HF-folder input does not give yet.
}

#[derive(Args)]
struct TrainArgs {
    /// The base model (also when resuming): a .gguf file, a Hugging Face folder or a hub id.
    #[arg(long)]
    model: String,
    /// Training data, tokenized JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Validation data, tokenized JSONL.
    #[arg(long, conflicts_with = "valid_fraction")]
    valid: Option<PathBuf>,
    /// Hold out this fraction of --data for validation (chosen by --seed).
    #[arg(long)]
    valid_fraction: Option<f64>,
    #[arg(long, value_enum, default_value = "full")]
    method: Method,
    #[arg(long, value_enum, default_value = "hf")]
    format: Format,
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
/// progress on stderr).
async fn load_model(gpu: &Gpu, arg: &str) -> Result<Model> {
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
    source.load(gpu, &hub, &mut progress).await
}

fn read_data(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    webtune::data::parse_tokenized_jsonl(&path.display().to_string(), &text)
}

pub async fn run() -> Result<()> {
    let cli = Cli::parse();
    let gpu = Gpu::new().await?;
    match cli.cmd {
        Cmd::Score { model, data, loss, micro_batch } => {
            let model = load_model(&gpu, &model).await?;
            let examples = read_data(&data)?;
            let mut t = Trainer::new(&gpu, model, TrainConfig { micro_batch, ..Default::default() })?;
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
            let model = load_model(&gpu, &model).await?;
            let examples = read_data(&data)?;
            let cfg = TrainConfig { loss, micro_batch, ..Default::default() };
            let mut t = Trainer::new(&gpu, model, cfg)?;
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
    let model = match a.method {
        Method::Full => load_model(gpu, &a.model).await?,
        // Method::Lora: the base model frozen, adapters added and trainable.
    };
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
    let data = prepare(read_data(&a.data)?, &a.data.display().to_string());
    let (train, valid) = match (&a.valid, a.valid_fraction) {
        (Some(v), _) => (data, prepare(read_data(v)?, &v.display().to_string())),
        (None, Some(f)) => split_validation(data, f, cfg.seed)?,
        (None, None) => (data, Vec::new()),
    };
    let trainer = Trainer::new(gpu, model, TrainConfig::default())?;
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
        export(gpu, &run, a.method, a.format, Path::new(&a.model), &a.out).await?;
    }
    Ok(())
}

/// Write the trained model. Where `--method lora` and `--format peft|merged|gguf` go.
async fn export(gpu: &Gpu, run: &Run<'_>, method: Method, format: Format, model_dir: &Path, out: &Path) -> Result<()> {
    match (method, format) {
        (Method::Full, Format::Hf) => {
            let cfg = model_dir.join("config.json");
            std::fs::copy(&cfg, out.join("config.json")).map_err(|e| Error::io(cfg.display().to_string(), e))?;
            let bytes = export_hf_safetensors(gpu, &run.trainer.model).await?;
            write_file(&out.join("model.safetensors"), &bytes)?;
            eprintln!("wrote the trained model to {} (config.json, model.safetensors)", out.display());
        }
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
