//! Gradient accumulation, the non-finite guard, and data errors, on the fixture models.

use webtune::train::{Example, LossMode};
use webtune::Error;

use crate::common::{block, check, f64s, gpu, Tol};
use crate::fixture::{Fixture, ARCHS, MODES};

/// One batch vs the same batch in micro-batches: the same sums in another order, so only
/// f32 re-association separates them.
const ACCUM: Tol = Tol { name: "ACCUM", abs: 1e-7, rel: 2e-6 };

#[test]
fn accumulation_equals_one_big_batch_in_every_mode() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        // Six examples (the fixture's three, twice in another order) so micro-batches of
        // 1, 2 and 4 split the batch unevenly.
        let mut ex = fx.examples.clone();
        ex.extend(fx.examples.iter().rev().cloned());
        for &mode in MODES {
            let mut whole = fx.trainer(g, mode, 6);
            let l_whole = block(whole.accumulate(&ex)).unwrap();
            let g_whole = block(whole.read_grads()).unwrap();
            for micro in [1, 2, 4] {
                let mut t = fx.trainer(g, mode, micro);
                let l = block(t.accumulate(&ex)).unwrap();
                assert!(
                    (l - l_whole).abs() <= 1e-6 * l_whole.abs(),
                    "{arch} {mode} micro {micro}: loss {l} vs {l_whole}"
                );
                let gm = block(t.read_grads()).unwrap();
                let mut worst = 0f64;
                for ((name, _, a), (_, _, b)) in gm.iter().zip(&g_whole) {
                    worst = worst.max(check(&format!("{arch} {mode} micro {micro} {name}"), a, &f64s(b), ACCUM));
                }
                eprintln!("{arch} {mode} micro-batch {micro}: worst relative gradient difference {worst:.2e}");
            }
        }
    }
}

#[test]
fn non_finite_gradient_skips_the_step_and_keeps_parameters() {
    let g = gpu();
    let fx = Fixture::load("llama");
    let mut t = fx.trainer(g, LossMode::PerExample, 8);
    block(t.step(&fx.examples)).unwrap();
    // Poison one weight of the final norm: every loss row's logits become NaN.
    let p = t.model.params.id("model.norm.weight").unwrap();
    let mut w = block(t.model.params.read(g, p)).unwrap();
    w[3] = f32::INFINITY;
    g.write_f32(&t.model.params.weight(p), &w);
    let snapshot = |t: &webtune::train::Trainer| -> Vec<Vec<u32>> {
        t.model
            .params
            .arenas
            .iter()
            .flat_map(|a| [Some(&a.weights), a.m.as_ref(), a.v.as_ref()])
            .flatten()
            .map(|x| block(g.read_u32(x)).unwrap())
            .collect()
    };
    let before = snapshot(&t);
    let err = block(t.step(&fx.examples)).unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 2, .. }), "{err}");
    assert!(err.to_string().contains("not applied"), "{err}");
    assert_eq!(t.step, 1, "the failed step is not counted");
    assert!(before == snapshot(&t), "parameters and moments must be bit-for-bit unchanged");
}

#[test]
fn an_example_without_answer_tokens_is_rejected_by_name() {
    let g = gpu();
    let fx = Fixture::load("gpt2");
    let mut t = fx.trainer(g, LossMode::PerExample, 8);
    let mut ex = fx.examples.clone();
    let ids = ex[1].ids.clone();
    let n = ids.len();
    ex[1] = Example::prompt_answer(ids, n, "data.jsonl:2");
    let err = block(t.step(&ex)).unwrap_err();
    assert!(matches!(err, Error::Data(_)), "{err}");
    assert!(err.to_string().contains("data.jsonl:2"), "{err}");
    assert_eq!(t.step, 0);
    // The all-tokens mode trains it, so it is accepted there.
    let mut t = fx.trainer(g, LossMode::AllTokens, 8);
    block(t.step(&ex)).unwrap();
}

#[test]
fn over_long_and_out_of_vocabulary_examples_are_refused() {
    let g = gpu();
    let fx = Fixture::load("gpt2");
    let mut t = fx.trainer(g, LossMode::PerExample, 8);
    let max = t.model.max_seq();
    let long = Example::prompt_answer(vec![1; max + 1], 1, "long.jsonl:1");
    let err = block(t.step(&[long])).unwrap_err();
    assert!(err.to_string().contains("long.jsonl:1") && err.to_string().contains("maximum"), "{err}");
    let oov = Example::prompt_answer(vec![1, 2, 100_000], 1, "oov.jsonl:7");
    let err = block(t.step(&[oov])).unwrap_err();
    assert!(err.to_string().contains("oov.jsonl:7") && err.to_string().contains("vocabulary"), "{err}");
}

/// A device whose storage bindings are capped at 1 MiB, injected like any other.
fn small_gpu() -> webtune::gpu::Gpu {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = block(instance.request_adapter(&Default::default())).unwrap();
    let mut limits = adapter.limits();
    limits.max_storage_buffer_binding_size = 1 << 20;
    let desc = wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() };
    let (device, queue) = block(adapter.request_device(&desc)).unwrap();
    webtune::gpu::Gpu::from_device(&adapter.get_info(), device, queue)
}

#[test]
fn a_batch_beyond_the_adapter_limits_is_refused_before_allocation() {
    let g = small_gpu();
    let fx = Fixture::load("llama");
    let mut t = fx.trainer(&g, LossMode::AllTokens, 64);
    // 40 x 100 tokens: the (N, V) logits alone need 40*99*97*4 bytes > 1 MiB.
    let ex: Vec<Example> = (0..40)
        .map(|i| Example::prompt_answer((0..100).map(|j| (i + j) % 97).collect(), 1, format!("big:{i}")))
        .collect();
    let err = block(t.step(&ex)).unwrap_err();
    assert!(matches!(err, Error::Limit { limit: "maxStorageBufferBindingSize", .. }), "{err}");
    eprintln!("{err}");
    // A micro-batch of 4 fits: the same data trains with gradient accumulation.
    t.cfg.micro_batch = 4;
    block(t.step(&ex)).unwrap();
}

/// Packing several examples into one row (own positions, own attention segment) gives the
/// loss and gradients of the padded batch in every mode: no token sees another example.
#[test]
fn packed_rows_give_the_padded_batch_s_loss_and_gradients() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let mut ex = fx.examples.clone();
        ex.extend(fx.examples.iter().rev().cloned());
        for &mode in MODES {
            let mut padded = fx.trainer(g, mode, 6);
            let l_pad = block(padded.accumulate(&ex)).unwrap();
            let g_pad = block(padded.read_grads()).unwrap();
            let mut packed = fx.trainer(g, mode, 6);
            // Rows of up to 20 tokens: the 9-, 5- and 14-token examples share rows.
            packed.cfg.pack = 20;
            let plan = webtune::train::batch::plan_packed(&ex, mode, 6, 20).unwrap();
            assert!(plan[0].b < ex.len(), "{arch}: packing must put several examples in a row");
            let l = block(packed.accumulate(&ex)).unwrap();
            assert!((l - l_pad).abs() <= 1e-6 * l_pad.abs(), "{arch} {mode}: packed loss {l} vs padded {l_pad}");
            let mut worst = 0f64;
            for ((name, _, a), (_, _, b)) in block(packed.read_grads()).unwrap().iter().zip(&g_pad) {
                worst = worst.max(check(&format!("{arch} {mode} packed {name}"), a, &f64s(b), ACCUM));
            }
            eprintln!(
                "{arch} {mode}: {} rows instead of {}, worst gradient difference {worst:.2e}",
                plan[0].b,
                ex.len()
            );
        }
    }
}

/// Activation checkpointing and the chunked LM head against the old layout (every block's
/// activations saved, the head over all loss rows at once): the same kernels on the same
/// inputs, so the loss and every gradient are the same bits, except the gradients summed
/// over the loss rows inside the head (the LM head, tied to the embedding here, and the
/// final norm), which the chunks add up in another order (f32 re-association: ACCUM).
#[test]
fn recompute_and_chunked_head_match_the_saved_activations_layout() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        // 300 loss rows under all-tokens: five chunks of 64 (the last one short).
        let ex: Vec<Example> = (0..12).flat_map(|_| fx.examples.iter().cloned()).collect();
        let run = |recompute: bool, head_chunk: usize| {
            let mut t = fx.trainer(g, LossMode::AllTokens, ex.len());
            t.cfg.recompute = recompute;
            t.cfg.head_chunk = head_chunk;
            let l = block(t.accumulate(&ex)).unwrap();
            let ws = t.workspace().unwrap();
            assert_eq!((ws.opts.recompute, ws.layers.len()), (recompute, if recompute { 1 } else { 2 }));
            let tree = &t.model.tree;
            let specs = &t.model.params.specs;
            let head: Vec<String> = [Some(tree.lm_head), Some(tree.ln_f.w), tree.ln_f.b]
                .into_iter()
                .flatten()
                .map(|p| specs[p].name.clone())
                .collect();
            (l, block(t.read_grads()).unwrap(), head)
        };
        let (l_old, g_old, head) = run(false, 1 << 12);
        let (l_new, g_new, _) = run(true, 64);
        assert_eq!(l_new.to_bits(), l_old.to_bits(), "{arch}: loss {l_new} vs {l_old}");
        assert_eq!(g_new.len(), g_old.len());
        let mut exact = 0;
        for ((name, _, a), (_, _, b)) in g_new.iter().zip(&g_old) {
            if head.contains(name) {
                check(&format!("{arch} {name}"), a, &f64s(b), ACCUM);
            } else {
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{arch} {name}: not bit-identical");
                exact += 1;
            }
        }
        eprintln!(
            "{arch}: loss bit-identical, {exact} of {} gradients bit-identical (the rest: the head's)",
            g_new.len()
        );
    }
}

/// Split-K across workgroups (`ops::matmul::KSplit`, GPUs) in a whole model: the LM
/// head's input gradient (K = V = 4096), full fine-tuning's weight gradients and LoRA's dA
/// and dB (K = 2100 rows of one micro-batch), in a Llama-shaped model, on a device with the GPU column of
/// the matmul table (where both are cut into ranges) and one with the CPU column
/// (unsplit). Every gradient agrees within GRADS (each column matches the float64
/// fixtures at that tolerance elsewhere); and on the split device a chunked head (64 rows,
/// the last one short) gives the one-chunk run's bits for every gradient but the head's
/// (the head's ranges are fixed per model, not per chunk).
#[test]
fn split_k_head_and_weight_gradients_match_the_unsplit_ones_and_any_chunking() {
    use webtune::gpu::Gpu;
    use webtune::model::{head_k_ranges, presets::random_init, LoraConfig, Model, ModelConfig};
    use webtune::ops::matmul::{Adapter, Linear, WeightLayout};
    use webtune::train::{TrainConfig, Trainer};
    const GRADS: Tol = Tol { name: "GRADS", abs: 1e-7, rel: 2e-5 };
    let fx = Fixture::load("llama");
    let json = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
    let cfg = ModelConfig { vocab: 4096, ..ModelConfig::from_hf_json(&json).unwrap() };
    let device = |cpu_column: bool| {
        let mut g = block(Gpu::new()).unwrap();
        g.matmul_cpu = cpu_column;
        g
    };
    let (split_dev, whole_dev) = (device(false), device(true));
    assert!(head_k_ranges(&cfg, Adapter::of(&split_dev)) > 1, "K = 4096 is split on the GPU column");
    assert_eq!(head_k_ranges(&cfg, Adapter::of(&whole_dev)), 1);
    let q_proj = Linear { rows: 2100, fan_in: cfg.hidden, fan_out: cfg.hidden, layout: WeightLayout::OutIn };
    assert!(q_proj.weight_grad().scratch(2100) > 0, "2100 rows are split on the GPU column");
    let mut rng = webtune::rng::Rng::new(11);
    // 2100 loss rows in one micro-batch: 33 chunks of 64, the last one short.
    let ex: Vec<Example> = (0..84)
        .map(|i| {
            let ids = (0..25).map(|_| (rng.next_u64() % cfg.vocab as u64) as u32).collect();
            Example::prompt_answer(ids, 0, format!("example {i}"))
        })
        .collect();
    let lora = LoraConfig::new(4, 8.0, &["all-linear"]);
    let run_with = |g: &Gpu, lora: Option<&LoraConfig>, head_chunk: usize| {
        let model = Model::build(g, cfg.clone(), lora, random_init(3)).unwrap();
        let mut t =
            Trainer::new(g, model, TrainConfig { loss: LossMode::AllTokens, micro_batch: 12, ..Default::default() })
                .unwrap();
        t.cfg.head_chunk = head_chunk;
        let l = block(t.accumulate(&ex)).unwrap();
        (l, block(t.read_grads()).unwrap())
    };
    let run = |g: &Gpu, head_chunk: usize| run_with(g, None, head_chunk);
    // LoRA's dA and dB (K = 2100 rows) split too: 2 ranges each here.
    let (l_lora, g_lora) = run_with(&split_dev, Some(&lora), 1 << 12);
    let (l_lora_whole, g_lora_whole) = run_with(&whole_dev, Some(&lora), 1 << 12);
    assert!((l_lora - l_lora_whole).abs() <= 1e-5 * l_lora_whole.abs(), "LoRA loss {l_lora} vs {l_lora_whole}");
    assert_eq!(g_lora.len(), 2 * 7 * cfg.layers, "only the adapters train");
    for ((name, _, a), (_, _, b)) in g_lora.iter().zip(&g_lora_whole) {
        check(&format!("split vs unsplit LoRA: {name}"), a, &f64s(b), GRADS);
    }
    let (l_split, g_split) = run(&split_dev, 1 << 12);
    let (l_whole, g_whole) = run(&whole_dev, 1 << 12);
    assert!((l_split - l_whole).abs() <= 1e-5 * l_whole.abs(), "loss {l_split} vs {l_whole}");
    for ((name, _, a), (_, _, b)) in g_split.iter().zip(&g_whole) {
        check(&format!("split vs unsplit head: {name}"), a, &f64s(b), GRADS);
    }
    let (l_chunked, g_chunked) = run(&split_dev, 64);
    assert_eq!(l_chunked.to_bits(), l_split.to_bits());
    let head = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"];
    for ((name, _, a), (_, _, b)) in g_chunked.iter().zip(&g_split) {
        if head.contains(&name.as_str()) {
            check(&format!("chunked head: {name}"), a, &f64s(b), ACCUM);
        } else {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "chunked head: {name} not bit-identical");
        }
    }
}
