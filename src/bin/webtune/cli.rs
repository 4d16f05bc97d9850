use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use webtune::error::{Error, Result};
use webtune::gpu::{Gpu, Profile};
use webtune::load::hub::{Hub, Progress};
use webtune::load::ModelSource;
use webtune::model::presets::{preset, random_init};
use webtune::model::Model;
use webtune::rng::Rng;
use webtune::train::{Example, LossMode, TrainConfig, Trainer};

#[derive(Parser)]
#[command(name = "webtune", version, about = "Fine-tune small language models on the GPU (wgpu + WGSL)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
        Cmd::Bench { model, preset: name, batch, seq, steps, warmup, loss, no_profile } => {
            bench(&gpu, model, name, batch, seq, steps, warmup, loss, !no_profile).await?;
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
