//! Decode speed of a preset with random weights: prefill a prompt, then time greedy decoding
//! with the KV cache (one logits readback per token, as `generate` does).
//!
//! `cargo run --example decode_speed -- [preset] [prompt tokens] [new tokens]`
//! (default: tiny-llama 32 128).

use std::time::Instant;

use webtune::gpu::Gpu;
use webtune::model::presets::{preset, random_init};
use webtune::model::{Decoder, GenerateConfig, Model};

fn main() -> webtune::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("tiny-llama");
    let prompt_len: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let new: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let gpu = pollster::block_on(Gpu::new())?;
    let cfg = preset(name)?;
    let vocab = cfg.vocab as u32;
    let model = Model::new(&gpu, cfg, random_init(1))?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 7919) % vocab).collect();
    let mut dec = Decoder::new(&gpu, &model, 1, prompt_len + new)?;
    // Warm-up: compile the pipelines.
    let gen = GenerateConfig { max_new_tokens: 4, ..Default::default() };
    pollster::block_on(dec.generate(&prompt, &gen, |_| true))?;
    dec.reset();
    let t0 = Instant::now();
    let mut logits = pollster::block_on(dec.feed(&[&prompt]))?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 1..new {
        let tok = webtune::model::generate::argmax(&logits);
        logits = pollster::block_on(dec.feed(&[&[tok]]))?;
    }
    let decode = t1.elapsed().as_secs_f64();
    println!(
        "{name} on {} ({}): prefill {prompt_len} tokens in {:.1} ms ({:.0} tokens/s); decode {} tokens in {:.2} s: {:.1} tokens/s ({:.1} ms/token)",
        gpu.info.name,
        gpu.info.backend,
        prefill * 1e3,
        prompt_len as f64 / prefill,
        new - 1,
        decode,
        (new - 1) as f64 / decode,
        decode * 1e3 / (new - 1) as f64
    );
    Ok(())
}
