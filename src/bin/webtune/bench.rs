//! `webtune bench`: full fine-tuning or LoRA steps on a preset or a model, timed after
//! warm-up, with the device work counted per step and a per-kernel profile.

use std::time::Instant;

use webtune::error::{Error, Result};
use webtune::gpu::{Gpu, Profile, ProfileEntry};
use webtune::model::presets::{preset, random_init};
use webtune::model::{LoraConfig, Model};
use webtune::rng::Rng;
use webtune::session::{Base, Method, Settings};
use webtune::train::{Example, LossMode, TrainConfig, Trainer};

/// What is timed: the batch, how many steps, and whether a profiled step follows.
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub warmup: usize,
    pub loss: LossMode,
    pub profile: bool,
}

pub async fn bench(
    gpu: &Gpu,
    model: Option<String>,
    name: Option<String>,
    shape: Shape,
    lora: Option<LoraConfig>,
    base: Base,
) -> Result<()> {
    let Shape { batch, seq, steps, warmup, loss, profile } = shape;
    let (model, label) = match (model, name) {
        (Some(m), _) => {
            // Loaded as `train` loads it, so LoRA and the base precision mean the same.
            let settings = match &lora {
                Some(l) => Settings {
                    method: Method::Lora,
                    lora_rank: l.rank,
                    lora_alpha: l.alpha,
                    lora_targets: l.targets.clone(),
                    base,
                    ..Default::default()
                },
                None => Settings { method: Method::Full, base, ..Default::default() },
            };
            settings.check()?;
            (crate::cli::load_model(gpu, &m, settings).await?, m)
        }
        (None, _) if base != Base::Auto && base != Base::F32 => {
            return Err(Error::Usage(format!("bench --base {base} needs a --model (presets have random f32 weights)")));
        }
        (None, n) => {
            let n = n.unwrap_or_else(|| "smollm2-135m".into());
            (Model::build(gpu, preset(&n)?, lora.as_ref(), random_init(0))?, format!("preset {n}"))
        }
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
        "model: {label} ({} parameters, {:.1} MiB for weights, grads and AdamW; base {})",
        model.params.num_params(),
        model.params.gpu_bytes() as f64 / 1048576.0,
        model.params.precision_summary()
    );
    let f16 = match (gpu.shader_f16, gpu.matmul_f16) {
        (_, true) => "shader-f16, f16 matmul tiles on",
        (true, false) => "shader-f16 (WEBTUNE_F16=1 for f16 matmul tiles)",
        (false, _) => "no shader-f16",
    };
    let sg = match (gpu.subgroups, gpu.matmul_subgroups) {
        (_, true) => "subgroups, skinny matmul reduction on",
        (true, false) => "subgroups (WEBTUNE_SUBGROUPS=1 for the skinny matmul reduction)",
        (false, _) => "no subgroups",
    };
    let table = if gpu.matmul_cpu { "CPU" } else { "GPU" };
    let i = &gpu.info;
    println!("adapter: {} ({}, {}; {f16}; {sg}; the matmul table's {table} column)", i.name, i.backend, i.device_type);
    let method = match &lora {
        Some(l) => format!("LoRA rank {} on {}", l.rank, l.targets.join(",")),
        None => "full fine-tuning".into(),
    };
    println!("batch {batch} x seq {seq}, loss {loss}, {method}, AdamW");
    let cfg = TrainConfig { loss, micro_batch: batch, ..Default::default() };
    let mut t = Trainer::new(gpu, model, cfg)?;
    for i in 0..warmup {
        let c0 = gpu.counters.snapshot();
        t.step(&examples).await?;
        println!("warm-up step {}: {}", i + 1, gpu.counters.snapshot() - c0);
    }
    let c0 = gpu.counters.snapshot();
    let t0 = Instant::now();
    for _ in 0..steps {
        t.step(&examples).await?;
    }
    let dt = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    let c = gpu.counters.snapshot() - c0;
    let k = steps.max(1) as u64;
    let per = webtune::gpu::CounterSnapshot {
        dispatches: c.dispatches / k,
        bind_groups: c.bind_groups / k,
        buffers: c.buffers / k,
        buffer_bytes: c.buffer_bytes / k,
        uploads: c.uploads / k,
        upload_bytes: c.upload_bytes / k,
        readbacks: c.readbacks / k,
        submits: c.submits / k,
        encode_ns: c.encode_ns / k,
    };
    println!("per timed step: {per}");
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
    // Every product of the matmul family (labels `matmul.<layout>.<kernel>`), by kernel.
    let mut classes: std::collections::BTreeMap<&str, ProfileEntry> = Default::default();
    for (name, e) in &p.entries {
        let Some(kernel) = name.strip_prefix("matmul.").and_then(|r| r.split('.').nth(1)) else { continue };
        let c = classes.entry(kernel).or_default();
        c.calls += e.calls;
        c.seconds += e.seconds;
        c.flops += e.flops;
    }
    let mut all = ProfileEntry::default();
    for (kernel, e) in &classes {
        println!(
            "matmul class {kernel:<14} {:>5} calls {:>9.2} GFLOP {:>9.1} ms {:>8.2} GFLOP/s",
            e.calls,
            e.flops as f64 / 1e9,
            e.seconds * 1e3,
            e.flops as f64 / e.seconds / 1e9
        );
        all.flops += e.flops;
        all.seconds += e.seconds;
    }
    if all.seconds > 0.0 {
        println!(
            "\nmatmuls: {:.2} GFLOP in {:.1} ms = {:.2} GFLOP/s ({:.1}% of the profiled step)",
            all.flops as f64 / 1e9,
            all.seconds * 1e3,
            all.flops as f64 / all.seconds / 1e9,
            100.0 * all.seconds / total
        );
    }
}

/// `--method lora|full` with its rank and targets.
pub fn lora_config(method: &str, rank: usize, targets: &str) -> Result<Option<LoraConfig>> {
    match method {
        "full" => Ok(None),
        "lora" => {
            let t: Vec<&str> = targets.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
            let l = LoraConfig::new(rank, 2.0 * rank as f32, &t);
            l.validate()?;
            Ok(Some(l))
        }
        m => Err(Error::Usage(format!("--method {m}: expected lora or full"))),
    }
}
