//! Generation on the fixture models: decoding with the KV cache against full forwards,
//! the prompt's logits against transformers, greedy chains, sampling, stopping, errors.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "model/fixture.rs"]
mod fixture;

use common::{block, check, f64s, gpu, Rng, Tol};
use fixture::{Fixture, ARCHS};
use webtune::gpu::{Encoder, Gpu};
use webtune::model::generate::argmax;
use webtune::model::{
    generate, Decoder, GenerateConfig, Generation, Head, Inputs, Model, Sampler, Sampling, StopReason,
};
use webtune::Error;

/// Decoding with the cache vs a full forward, both f32 on the same GPU: the same sums in
/// another order (the attention's key tiles, and one row per matmul instead of many), so
/// only round-off separates them, ~1e-7 of the largest logit; a wrong position or a stale
/// cache row moves logits by ~1e-2.
const DECODE: Tol = Tol { name: "DECODE", abs: 1e-6, rel: 5e-6 };
/// The prompt's last logits against transformers in f64: the bound of tests/model/parity.rs.
const LOGITS: Tol = Tol { name: "LOGITS", abs: 1e-6, rel: 1e-5 };

/// The logits (T, V) of every position of `ids` from one full forward (Model::forward,
/// Head::Logits): row t is the forward over ids[..=t] (causal).
fn full_logits(g: &Gpu, model: &Model, ids: &[u32]) -> Vec<f32> {
    let t = ids.len();
    let rows: Vec<u32> = (0..t as u32).collect();
    let ws = model.workspace(g, t, t).unwrap();
    let inp = Inputs {
        b: 1,
        t,
        n: t,
        ids: g.upload_u32("ids", ids).unwrap(),
        pos: g.upload_u32("pos", &rows).unwrap(),
        seg: g.zeros("seg", t).unwrap(),
        loss_rows: g.upload_u32("rows", &rows).unwrap(),
        targets: g.zeros("targets", t).unwrap(),
        weights: g.zeros("weights", t).unwrap(),
        by_id: None,
        by_pos: None,
        dropout_salt: None,
    };
    let mut enc = Encoder::new(g);
    model.forward(&mut enc, &ws, &inp, Head::Logits);
    enc.submit();
    block(g.read_f32(&ws.logits.view(0, t * model.cfg.vocab))).unwrap()
}

/// The last row of `full_logits`.
fn last_logits(g: &Gpu, model: &Model, ids: &[u32]) -> Vec<f32> {
    let v = model.cfg.vocab;
    let all = full_logits(g, model, ids);
    all[all.len() - v..].to_vec()
}

/// `n` greedy tokens after `prompt`, each the argmax of a full forward over the sequence
/// so far; also returns each step's gap between the best and the second-best logit.
fn argmax_chain(g: &Gpu, model: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, f32) {
    let mut seq = prompt.to_vec();
    let mut gap = f32::INFINITY;
    for _ in 0..n {
        let l = last_logits(g, model, &seq);
        let best = argmax(&l);
        let second =
            l.iter().enumerate().filter(|(i, _)| *i != best as usize).map(|(_, &x)| x).fold(f32::MIN, f32::max);
        gap = gap.min(l[best as usize] - second);
        seq.push(best);
    }
    (seq[prompt.len()..].to_vec(), gap)
}

fn run(g: &Gpu, model: &Model, prompt: &[u32], cfg: &GenerateConfig) -> (Generation, Vec<u32>) {
    let mut streamed = Vec::new();
    let out = block(generate(g, model, prompt, cfg, |t| {
        streamed.push(t);
        true
    }))
    .unwrap();
    assert_eq!(out.tokens, streamed, "every generated token is streamed, in order");
    (out, streamed)
}

#[test]
fn every_decode_step_matches_a_full_forward() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let v = model.cfg.vocab;
        // Long enough to cross the decode kernel's 64-key tiles where the model allows.
        let total = model.max_seq().min(72);
        let mut rng = Rng::new(11);
        let ids: Vec<u32> = (0..total).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        let prompt = 20;
        let mut dec = Decoder::new(g, &model, 1, total).unwrap();
        // Prefill in chunks of 8 (8 + 8 + 4): later chunks attend to earlier ones' cache.
        dec.set_prefill_chunk(8).unwrap();
        let full = full_logits(g, &model, &ids);
        let mut worst = 0f64;
        let got = block(dec.feed(&[&ids[..prompt]])).unwrap();
        worst = worst.max(check(
            &format!("{arch} prefill of {prompt}"),
            &got,
            &f64s(&full[(prompt - 1) * v..prompt * v]),
            DECODE,
        ));
        for t in prompt..total {
            let got = block(dec.feed(&[&ids[t..t + 1]])).unwrap();
            // The full forward over ids[..=t] alone, as generation without a cache would.
            let want = if t % 16 == 0 { last_logits(g, &model, &ids[..=t]) } else { full[t * v..(t + 1) * v].to_vec() };
            worst = worst.max(check(&format!("{arch} decode step at position {t}"), &got, &f64s(&want), DECODE));
        }
        assert_eq!(dec.len(), total);
        eprintln!("{arch}: prefill + {} decode steps, worst relative error {worst:.2e}", total - prompt);
    }
}

#[test]
fn two_sequences_decode_as_each_alone() {
    let g = gpu();
    let fx = Fixture::load("llama");
    let model = fx.model(g);
    let v = model.cfg.vocab;
    let (a, b) = (&fx.examples[1].ids, &fx.examples[0].ids);
    let n = a.len().min(b.len());
    let mut dec = Decoder::new(g, &model, 2, n).unwrap();
    let mut worst = 0f64;
    let p = 4;
    let mut logits = block(dec.feed(&[&a[..p], &b[..p]])).unwrap();
    for t in p..=n {
        for (i, s) in [a, b].into_iter().enumerate() {
            let want = last_logits(g, &model, &s[..t]);
            worst =
                worst.max(check(&format!("sequence {i} at {t}"), &logits[i * v..(i + 1) * v], &f64s(&want), DECODE));
        }
        if t < n {
            logits = block(dec.feed(&[&a[t..t + 1], &b[t..t + 1]])).unwrap();
        }
    }
    eprintln!("batch of 2: worst relative error {worst:.2e}");
}

#[test]
fn prompt_logits_match_transformers() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let v = model.cfg.vocab;
        let mut dec = Decoder::new(g, &model, 1, model.max_seq()).unwrap();
        for (i, e) in fx.examples.iter().enumerate() {
            let (_, want) = &fx.expected[&format!("logits.{i}")];
            for p in [1, e.ids.len() / 2, e.ids.len()] {
                dec.reset();
                let got = block(dec.feed(&[&e.ids[..p]])).unwrap();
                let err = check(
                    &format!("{arch} example {i}: logits after a prompt of {p}"),
                    &got,
                    &want[(p - 1) * v..p * v],
                    LOGITS,
                );
                eprintln!("{arch} example {i} prompt {p}: worst relative error {err:.2e}");
            }
        }
    }
}

#[test]
fn greedy_decoding_equals_the_argmax_chain_of_full_forwards() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let prompt = &fx.examples[0].ids;
        let n = 16;
        let (want, gap) = argmax_chain(g, &model, prompt, n);
        let cfg = GenerateConfig { max_new_tokens: n, ..Default::default() };
        let (out, _) = run(g, &model, prompt, &cfg);
        eprintln!("{arch}: greedy {:?} (smallest top-2 logit gap {gap:.2e})", out.tokens);
        assert_eq!(out.tokens, want, "{arch}: greedy tokens vs the argmax chain of full forwards");
        assert_eq!(out.stop, StopReason::MaxTokens);
    }
}

fn sampled(g: &Gpu, model: &Model, prompt: &[u32], sampling: Sampling, n: usize) -> Vec<u32> {
    let cfg = GenerateConfig { max_new_tokens: n, sampling, ..Default::default() };
    run(g, model, prompt, &cfg).0.tokens
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let g = gpu();
    let fx = Fixture::load("llama");
    let model = fx.model(g);
    let prompt = &fx.examples[2].ids;
    let s = |seed| Sampling { temperature: 1.0, top_k: 40, top_p: 0.95, seed };
    let a = sampled(g, &model, prompt, s(42), 24);
    let b = sampled(g, &model, prompt, s(42), 24);
    let c = sampled(g, &model, prompt, s(43), 24);
    eprintln!("seed 42: {a:?}\nseed 43: {c:?}");
    assert_eq!(a, b, "the same seed must give the same tokens");
    assert_ne!(a, c, "another seed gives other tokens (fixed seeds: deterministic)");
}

#[test]
fn top_k_one_and_a_tiny_top_p_are_greedy() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let prompt = &fx.examples[1].ids;
        let greedy = sampled(g, &model, prompt, Sampling::greedy(), 12);
        let top_k = sampled(g, &model, prompt, Sampling { temperature: 1.5, top_k: 1, top_p: 1.0, seed: 3 }, 12);
        let top_p = sampled(g, &model, prompt, Sampling { temperature: 1.5, top_k: 0, top_p: 1e-6, seed: 4 }, 12);
        assert_eq!(top_k, greedy, "{arch}: top-k = 1");
        assert_eq!(top_p, greedy, "{arch}: tiny top-p");
    }
}

/// The host sampler against the exact distribution softmax(logits / T), restricted and
/// renormalized by top-k / top-p. With a fixed seed the draws are fixed, so the bound
/// (5 standard deviations of a frequency) decides once and cannot flake.
#[test]
fn temperature_top_k_and_top_p_shape_the_distribution() {
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0, 1.0];
    let draws = 40_000;
    let mut top_freq = Vec::new();
    for (temperature, top_k, top_p) in [(0.5, 0, 1.0), (1.0, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.7)] {
        let mut s = Sampler::new(Sampling { temperature, top_k, top_p, seed: 2024 });
        let mut count = [0usize; 6];
        for _ in 0..draws {
            count[s.sample(&logits).unwrap() as usize] += 1;
        }
        // Expected: softmax over the kept ids, most likely first (ties to the lower id).
        let mut order: Vec<usize> = (0..6).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let w: Vec<f64> = order.iter().map(|&i| ((logits[i] - logits[0]) as f64 / temperature as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut keep = if top_k == 0 { 6 } else { top_k };
        if top_p < 1.0 {
            let mut cum = 0.0;
            keep = w
                .iter()
                .position(|x| {
                    cum += x / total;
                    cum >= top_p as f64
                })
                .unwrap()
                + 1;
        }
        let mass: f64 = w[..keep].iter().sum();
        for (j, &i) in order.iter().enumerate() {
            let p = if j < keep { w[j] / mass } else { 0.0 };
            let f = count[i] as f64 / draws as f64;
            let bound = 5.0 * (p * (1.0 - p) / draws as f64).sqrt();
            eprintln!("T {temperature} k {top_k} p {top_p}: id {i} frequency {f:.4} vs probability {p:.4}");
            assert!((f - p).abs() <= bound, "id {i}: frequency {f} vs {p} (bound {bound})");
        }
        if top_k == 0 && top_p >= 1.0 {
            top_freq.push(count[0] as f64 / draws as f64);
        }
    }
    // Hotter is flatter: the most likely token is drawn less often as T rises.
    assert!(top_freq[0] > top_freq[1] && top_freq[1] > top_freq[2], "{top_freq:?}");
}

#[test]
fn generation_stops_at_a_stop_id_at_the_limit_and_when_asked() {
    let g = gpu();
    let fx = Fixture::load("llama");
    let model = fx.model(g);
    let prompt = &fx.examples[0].ids;
    let (chain, _) = argmax_chain(g, &model, prompt, 10);
    // A stop id: generation ends at its first occurrence, which is returned and streamed.
    let stop = chain[4];
    let at = chain.iter().position(|&t| t == stop).unwrap();
    let cfg = GenerateConfig { max_new_tokens: 10, stop_ids: vec![stop], ..Default::default() };
    let (out, streamed) = run(g, &model, prompt, &cfg);
    assert_eq!(out.tokens, chain[..=at], "stops at the first {stop}");
    assert_eq!(out.stop, StopReason::Stop(stop));
    assert_eq!(streamed.last(), Some(&stop));
    // The limit.
    let cfg = GenerateConfig { max_new_tokens: 3, ..Default::default() };
    let (out, _) = run(g, &model, prompt, &cfg);
    assert_eq!((out.tokens.as_slice(), out.stop), (&chain[..3], StopReason::MaxTokens));
    let cfg = GenerateConfig { max_new_tokens: 0, ..Default::default() };
    assert_eq!(run(g, &model, prompt, &cfg).0.tokens, Vec::<u32>::new());
    // The callback.
    let mut seen = 0;
    let cfg = GenerateConfig { max_new_tokens: 10, ..Default::default() };
    let out = block(generate(g, &model, prompt, &cfg, |_| {
        seen += 1;
        seen < 2
    }))
    .unwrap();
    assert_eq!((out.tokens.as_slice(), out.stop), (&chain[..2], StopReason::Callback));
    // A full cache: `capacity` positions hold the prompt and all but the last new token.
    let cfg = GenerateConfig { max_new_tokens: 10, capacity: Some(prompt.len() + 3), ..Default::default() };
    let (out, _) = run(g, &model, prompt, &cfg);
    assert_eq!((out.tokens.as_slice(), out.stop), (&chain[..4], StopReason::ContextFull));
}

#[test]
fn generation_stops_at_the_model_positions() {
    let g = gpu();
    let fx = Fixture::load("gpt2");
    let model = fx.model(g);
    let max = model.max_seq();
    let prompt: Vec<u32> = (0..max as u32 - 2).map(|i| i % 80).collect();
    let cfg = GenerateConfig { max_new_tokens: 10, ..Default::default() };
    let (out, _) = run(g, &model, &prompt, &cfg);
    assert_eq!((out.tokens.len(), out.stop), (3, StopReason::ContextFull));
}

#[test]
fn over_long_prompts_are_typed_errors() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let max = model.max_seq();
        let cfg = GenerateConfig::default();
        let long = vec![1u32; max + 1];
        let err = block(generate(g, &model, &long, &cfg, |_| true)).unwrap_err();
        assert!(
            matches!(err, Error::TooLong { tokens, max: m, limit: "the model's positions", .. } if tokens == max + 1 && m == max),
            "{err}"
        );
        eprintln!("{arch}: {err}");
        // Longer than the configured cache.
        let cfg = GenerateConfig { capacity: Some(8), ..Default::default() };
        let err = block(generate(g, &model, &[1; 9], &cfg, |_| true)).unwrap_err();
        assert!(matches!(err, Error::TooLong { tokens: 9, max: 8, limit: "the decoder's cache", .. }), "{err}");
        // A cache beyond the model's positions, and feeding past the cache.
        let err = Decoder::new(g, &model, 1, max + 1).err().unwrap();
        assert!(matches!(err, Error::TooLong { limit: "the model's positions", .. }), "{err}");
        let mut dec = Decoder::new(g, &model, 1, 4).unwrap();
        block(dec.feed(&[&[1, 2, 3]])).unwrap();
        let err = block(dec.feed(&[&[4, 5]])).unwrap_err();
        assert!(matches!(err, Error::TooLong { tokens: 5, max: 4, .. }), "{err}");
        // Nothing to start from, and ids outside the vocabulary.
        let err = block(generate(g, &model, &[], &GenerateConfig::default(), |_| true)).unwrap_err();
        assert!(matches!(err, Error::Data(_)), "{err}");
        let oov = model.cfg.vocab as u32;
        let err = block(generate(g, &model, &[1, oov], &GenerateConfig::default(), |_| true)).unwrap_err();
        assert!(matches!(err, Error::Data(_)), "{err}");
    }
}

/// With a LoRA adapter (PEFT's saved one, B non-zero), the cached decode still equals a full
/// forward of the same adapted model, and differs from the base: the adapter is active in
/// generation, on the few-rows matmul path too.
#[test]
fn decoding_with_a_lora_adapter_matches_a_full_forward() {
    use webtune::export::peft::{import_adapter, parse_adapter_config, AdapterFiles};
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora").join(arch);
        let files = AdapterFiles {
            config_json: std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(),
            safetensors: std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
        };
        let lora = parse_adapter_config(&files.config_json).unwrap();
        let model = webtune::load::model_from_hf_dir_lora(g, &fx.dir, Some(&lora)).unwrap();
        import_adapter(g, &model, &files).unwrap();
        let base = fx.model(g);
        let v = model.cfg.vocab;
        let ids: Vec<u32> = fx.examples[1].ids.clone();
        let full = full_logits(g, &model, &ids);
        let base_full = full_logits(g, &base, &ids);
        let mut dec = Decoder::new(g, &model, 1, ids.len()).unwrap();
        let mut worst = 0f64;
        let mut moved = 0f64;
        for t in 0..ids.len() {
            let got = block(dec.feed(&[&ids[t..t + 1]])).unwrap();
            let want = &full[t * v..(t + 1) * v];
            worst = worst.max(check(&format!("{arch} LoRA decode at {t}"), &got, &f64s(want), DECODE));
            moved = moved.max(
                got.iter().zip(&base_full[t * v..(t + 1) * v]).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max),
            );
        }
        assert!(moved > 1e-3, "{arch}: the adapter must change the logits (max change {moved})");
        eprintln!("{arch}: LoRA decode worst relative error {worst:.2e}, adapter moves logits by up to {moved:.3}");
    }
}
