//! The step's economy, counted: after the first steps a training step creates no bind
//! group and no buffer, reads back once, and dispatches the same work every step; a long
//! LoRA run keeps GPU memory, pipelines and cached bind groups flat; and submitting every
//! few dispatches gives the same bits as one submit per micro-batch.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::sync::Mutex;

use common::{block, gpu};
use webtune::gpu::{CounterSnapshot, Gpu};
use webtune::model::presets::{preset, random_init};
use webtune::model::{LoraConfig, Model, ModelConfig};
use webtune::rng::Rng;
use webtune::train::{Example, TrainConfig, Trainer};

/// The device's counters are shared by the binary: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// `batch` random examples of `seq` tokens, the second half the answer (as `bench`).
fn examples(vocab: usize, batch: usize, seq: usize) -> Vec<Example> {
    let mut rng = Rng::new(3);
    (0..batch)
        .map(|i| {
            let ids = (0..seq).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            Example::prompt_answer(ids, seq / 2, format!("economy:{i}"))
        })
        .collect()
}

fn trainer<'g>(g: &'g Gpu, cfg: ModelConfig, lora: Option<LoraConfig>, micro_batch: usize) -> Trainer<'g> {
    let model = Model::build(g, cfg, lora.as_ref(), random_init(0)).unwrap();
    Trainer::new(g, model, TrainConfig { micro_batch, ..Default::default() }).unwrap()
}

fn lora(cfg: &ModelConfig, dropout: f32) -> LoraConfig {
    LoraConfig { dropout, ..LoraConfig::new(4, 8.0, LoraConfig::all_linear(cfg.arch)) }
}

/// Each step's counters (the difference of snapshots around it).
fn steps(g: &Gpu, t: &mut Trainer, ex: &[Example], n: usize) -> Vec<CounterSnapshot> {
    (0..n)
        .map(|_| {
            let c0 = g.counters.snapshot();
            block(t.step(ex)).unwrap();
            g.counters.snapshot() - c0
        })
        .collect()
}

/// tiny-llama, LoRA with dropout and full fine-tuning, two micro-batches per step (so the
/// per-micro-batch salts and inputs are exercised): from the third step on, no bind group
/// and no buffer is created, one readback, the same dispatches every step.
#[test]
fn after_two_steps_a_step_creates_nothing_and_reads_back_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = gpu();
    let cfg = preset("tiny-llama").unwrap();
    let ex = examples(cfg.vocab, 4, 24);
    for (what, l) in [("LoRA dropout 0.1", Some(lora(&cfg, 0.1))), ("full fine-tuning", None)] {
        let mut t = trainer(g, cfg.clone(), l, 2);
        let per = steps(g, &mut t, &ex, 5);
        for (i, c) in per.iter().enumerate() {
            eprintln!("{what} step {}: {c}", i + 1);
        }
        for (i, c) in per.iter().enumerate().skip(2) {
            let step = i + 1;
            assert_eq!(c.bind_groups, 0, "{what} step {step}: bind groups created");
            assert_eq!(c.buffers, 0, "{what} step {step}: buffers created");
            assert_eq!(c.buffer_bytes, 0, "{what} step {step}: bytes allocated");
            assert_eq!(c.readbacks, 1, "{what} step {step}: readbacks");
            assert_eq!(c.dispatches, per[1].dispatches, "{what} step {step}: dispatches vs step 2");
            assert_eq!(c.submits, per[1].submits, "{what} step {step}: submits vs step 2");
        }
        assert!(per[2].submits > 3, "{what}: submits inside the micro-batches ({})", per[2].submits);
    }
}

/// The soak: 300 LoRA steps (dropout on) of a two-block model smaller than tiny-llama.
/// After the second step GPU bytes allocated, buffers, bind groups created, pipelines, and
/// the bind-group and uniform caches stay exactly where they were.
#[test]
fn three_hundred_lora_steps_stay_flat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = gpu();
    let cfg = ModelConfig::from_hf_json(
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":256,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":64,
            "rope_theta":10000,"rms_norm_eps":1e-5,"tie_word_embeddings":true}"#,
    )
    .unwrap();
    let ex = examples(cfg.vocab, 2, 12);
    let mut t = trainer(g, cfg.clone(), Some(lora(&cfg, 0.1)), 2);
    let t0 = std::time::Instant::now();
    steps(g, &mut t, &ex, 2);
    let level = |g: &Gpu| (g.counters.snapshot(), g.pipeline_count(), g.cached_bind_groups(), g.cached_uniforms());
    let (c0, pipes, binds, unis) = level(g);
    let mut losses = Vec::new();
    for step in 3..=300 {
        losses.push(block(t.step(&ex)).unwrap().loss);
        let (c, p, b, u) = level(g);
        let d = c - c0;
        assert_eq!(
            (d.buffers, d.buffer_bytes, d.bind_groups, p, b, u),
            (0, 0, 0, pipes, binds, unis),
            "step {step}: (buffers, bytes allocated, bind groups created, pipelines, cached bind groups, cached uniforms) moved"
        );
        assert_eq!(d.readbacks, step as u64 - 2, "step {step}: one readback per step");
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("300 LoRA steps in {secs:.1} s; loss {} -> {}", losses[0], losses[losses.len() - 1]);
    assert!(losses[losses.len() - 1] < losses[0], "the soak trains: {} -> {}", losses[0], losses[losses.len() - 1]);
}

/// Submitting every few dispatches (here every 7, so submits fall inside kernels' pairs
/// and blocks) gives the same losses, norms and gradients, bit for bit, as one submit per
/// micro-batch: queue order is submission order.
#[test]
fn submits_every_few_dispatches_keep_the_bits() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = gpu();
    let cfg = preset("tiny-llama").unwrap();
    let ex = examples(cfg.vocab, 4, 24);
    for l in [Some(lora(&cfg, 0.1)), None] {
        let run = |every: u64| {
            let mut t = trainer(g, cfg.clone(), l.clone(), 2);
            t.submit_every = every;
            let stats: Vec<(u64, u32)> = (0..3)
                .map(|_| block(t.step(&ex)).unwrap())
                .map(|s| (s.loss.to_bits(), s.grad_norm.to_bits()))
                .collect();
            let grads: Vec<Vec<u32>> = block(t.read_grads())
                .unwrap()
                .into_iter()
                .map(|(_, _, v)| v.iter().map(|x| x.to_bits()).collect())
                .collect();
            (stats, grads)
        };
        let (once, split) = (run(0), run(7));
        assert_eq!(once.0, split.0, "lora {}: losses and norms", l.is_some());
        assert!(once.1 == split.1, "lora {}: gradients differ", l.is_some());
    }
}
