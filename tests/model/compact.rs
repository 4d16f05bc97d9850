//! A frozen base kept compact in the parameter store: `ParamStore::new_compact` lays the
//! frozen matrices out in u32 compact arenas, `memory::estimate_compact` counts exactly
//! those bytes, and each parameter's view reads back (on the host, and through the GPU's
//! dequantizers) as the tensor it was given.

use webtune::gpu::Encoder;
use webtune::load::compact::{CompactFormat, CompactTensor};
use webtune::model::config::ModelConfig;
use webtune::model::memory::{estimate, estimate_compact, param_specs};
use webtune::model::params::{ParamInit, ParamSpec, ParamStore};
use webtune::model::LoraConfig;
use webtune::ops::dequant::dequant_rows;

use crate::common::{assert_same_bits, block, gpu, train_bits, Rng};

fn fixture_config(hidden: usize, ffn: usize) -> ModelConfig {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/qwen2/config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["hidden_size"] = hidden.into();
    v["intermediate_size"] = ffn.into();
    ModelConfig::from_hf_json(&v.to_string()).unwrap()
}

/// A different format for each kind of frozen matrix (every format appears).
fn format_of(s: &ParamSpec) -> Option<CompactFormat> {
    use CompactFormat::*;
    if !s.may_be_compact() {
        return None;
    }
    let layer1 = s.name.contains("layers.1.");
    Some(match () {
        _ if s.name.contains("embed_tokens") => Q8_0,
        _ if s.name.contains("lm_head") => Q6_K,
        _ if s.name.contains("q_proj") => Q4_K,
        _ if s.name.contains("k_proj") => {
            if layer1 {
                Q5_1
            } else {
                Q5_K
            }
        }
        _ if s.name.contains("v_proj") => Q5_0,
        _ if s.name.contains("o_proj") => {
            if layer1 {
                F32
            } else {
                BF16
            }
        }
        _ if s.name.contains("gate_proj") => Q4_0,
        _ if s.name.contains("up_proj") => F16,
        _ => Q4_1,
    })
}

/// A compact tensor of `f`: quantized random values where there is a quantizer, else
/// random blocks whose f16 scales are set to 1/16.
fn compact_tensor(rng: &mut Rng, s: &ParamSpec, f: CompactFormat) -> CompactTensor {
    let (rows, cols) = (s.shape[0], s.shape[1]);
    if let Ok(t) = CompactTensor::quantize(&s.name, f, rows, cols, &rng.vec(rows * cols, 0.1)) {
        return t;
    }
    let bb = f.gguf_block_bytes();
    let mut bytes: Vec<u8> = (0..rows * cols / f.block_values() * bb).map(|_| rng.below(256) as u8).collect();
    let offsets: &[usize] = match f {
        CompactFormat::Q6_K => &[208],
        CompactFormat::Q5_0 => &[0],
        _ => &[0, 2],
    };
    for b in bytes.chunks_exact_mut(bb) {
        for &o in offsets {
            b[o..o + 2].copy_from_slice(&0x2C00u16.to_le_bytes());
        }
    }
    CompactTensor::from_gguf(&s.name, f, rows, cols, &bytes).unwrap()
}

#[test]
fn compact_base_estimate_equals_allocation_and_views_read_back() {
    let g = gpu();
    let cfg = fixture_config(256, 512);
    let lora = LoraConfig::new(4, 8.0, LoraConfig::all_linear(cfg.arch));
    let specs = param_specs(&cfg, Some(&lora)).unwrap();
    let mut rng = Rng::new(5);
    let mut given = std::collections::HashMap::new();
    let store = ParamStore::new_compact(g, specs.clone(), format_of, |s| match format_of(s) {
        Some(f) => {
            let t = compact_tensor(&mut rng, s, f);
            given.insert(s.name.clone(), t.clone());
            Ok(ParamInit::Compact(t))
        }
        None => Ok(ParamInit::F32(rng.vec(s.numel(), 0.1))),
    })
    .unwrap();
    let e = estimate_compact(&cfg, Some(&lora), 2, 8, Default::default(), format_of).unwrap();
    assert_eq!(e.frozen_weights + e.trainable_weights + e.grads_and_moments, store.gpu_bytes());
    assert_eq!(e.compact_weights, store.compact_bytes());
    let f32_base = estimate(&cfg, Some(&lora), 2, 8).unwrap();
    assert_eq!(e.trainable_weights, f32_base.trainable_weights);
    assert_eq!(e.activations, f32_base.activations);
    assert!(e.frozen_weights < f32_base.frozen_weights / 2, "{} vs {}", e.frozen_weights, f32_base.frozen_weights);
    eprintln!("compact base: {e}\nf32 base: {f32_base}");
    // Every format is used, and every compact parameter reads back as given, on the host
    // and through the GPU's dequantizers (the views sit at the right offsets).
    let mut seen = std::collections::HashSet::new();
    for (p, s) in store.specs.iter().enumerate() {
        let Some(c) = store.compact(p) else {
            assert!(store.compact_slots[p].is_none());
            continue;
        };
        seen.insert(c.format);
        assert!(store.grad(p).is_none(), "{}: a compact parameter has no gradient", s.name);
        let want = given[&s.name].dequantize();
        let host = block(store.read(g, p)).unwrap();
        assert!(host.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: read back", s.name);
        let out = g.zeros("out", c.rows * c.cols).unwrap();
        let mut enc = Encoder::new(g);
        dequant_rows(&mut enc, &c, None, &out, c.rows, true).unwrap();
        enc.submit();
        let dev = block(g.read_f32(&out)).unwrap();
        assert!(dev.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: GPU dequant of the view", s.name);
    }
    assert_eq!(seen.len(), CompactFormat::ALL.len(), "formats used: {seen:?}");
}

#[test]
fn compact_base_refuses_what_cannot_be_compact_by_name() {
    let g = gpu();
    // hidden 32: not whole 256-value blocks for Q4_K.
    let cfg = fixture_config(32, 64);
    let lora = LoraConfig::new(4, 8.0, LoraConfig::all_linear(cfg.arch));
    let specs = param_specs(&cfg, Some(&lora)).unwrap();
    let k = |s: &ParamSpec| s.may_be_compact().then_some(CompactFormat::Q4_K);
    let e1 = estimate_compact(&cfg, Some(&lora), 1, 4, Default::default(), k).unwrap_err().to_string();
    let e2 = ParamStore::new_compact(g, specs.clone(), k, |_| unreachable!("refused before init"))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e1, e2);
    assert!(e1.contains("model.embed_tokens.weight") && e1.contains("256"), "{e1}");
    // A trainable parameter cannot be compact.
    let t = |s: &ParamSpec| s.trainable.then_some(CompactFormat::Q8_0);
    let e = ParamStore::new_compact(g, specs.clone(), t, |_| unreachable!()).err().unwrap().to_string();
    assert!(e.contains("lora_A") || e.contains("lora_B"), "{e}");
    // Nor GPT-2's learned positions, which only the f32 gather reads.
    let gpt2 = ModelConfig::from_hf_json(GPT2).unwrap();
    let wpe = |s: &ParamSpec| s.name.contains("wpe").then_some(CompactFormat::Q8_0);
    let lora2 = LoraConfig::new(4, 8.0, LoraConfig::all_linear(gpt2.arch));
    let specs2 = param_specs(&gpt2, Some(&lora2)).unwrap();
    let e = ParamStore::new_compact(g, specs2, wpe, |_| unreachable!()).err().unwrap().to_string();
    assert!(e.contains("transformer.wpe.weight"), "{e}");
    // The wrong kind of initial value is a typed error naming the parameter.
    let q8 = |s: &ParamSpec| s.may_be_compact().then_some(CompactFormat::Q8_0);
    let e = ParamStore::new_compact(g, specs, q8, |s| Ok(ParamInit::F32(vec![0.0; s.numel()]))).err().unwrap();
    assert!(e.to_string().contains("laid out as Q8_0"), "{e}");
}

/// What a compact base saves on the default model (printed for the record).
#[test]
fn smollm2_135m_lora_with_compact_bases() {
    let cfg = webtune::model::presets::preset("smollm2-135m").unwrap();
    let lora = LoraConfig::new(16, 32.0, LoraConfig::all_linear(cfg.arch));
    let f32_base = estimate(&cfg, Some(&lora), 4, 256).unwrap();
    eprintln!("smollm2-135m LoRA r16, 4 x 256, f32 base: {f32_base}");
    for f in [CompactFormat::BF16, CompactFormat::Q8_0, CompactFormat::Q4_0, CompactFormat::Q4_K] {
        let of = |s: &ParamSpec| (s.may_be_compact() && s.shape[1].is_multiple_of(f.block_values())).then_some(f);
        let e = estimate_compact(&cfg, Some(&lora), 4, 256, Default::default(), of).unwrap();
        eprintln!("  {} base: {e}", f.name());
        assert!(e.frozen_weights < f32_base.frozen_weights);
    }
}

/// LoRA over a frozen base kept compact on the GPU trains exactly as over its f32
/// expansion: every frozen matrix (the tied embedding / LM head included) quantized on
/// load, one model reading the blocks in its kernels, the other the host-dequantized f32
/// values. The losses of 5 AdamW steps and the adapter gradients after them are equal bit
/// for bit, with dropout on, under activation checkpointing (no tolerance: the in-kernel
/// dequantizers give the host's bits, and each product runs the same fmas in the same
/// order). Also for a tiny Gemma 3 (its scaled compact embedding gather, the compact tied
/// head under the final soft-cap, sliding and global layers).
#[test]
fn lora_over_a_compact_base_trains_as_over_its_f32_expansion() {
    use webtune::model::presets::preset;
    // tiny-llama: C 128, ffn 352, V 2048, tied: rows of 32-value blocks (K-quants need 256).
    compact_against_f32_expansion(preset("tiny-llama").unwrap());
    let gemma = r#"{"architectures":["Gemma3ForCausalLM"],"vocab_size":2048,"hidden_size":128,
        "intermediate_size":352,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,
        "head_dim":32,"max_position_embeddings":1024,"query_pre_attn_scalar":24,"sliding_window":8,
        "layer_types":["sliding_attention","sliding_attention","full_attention","sliding_attention"],
        "final_logit_softcapping":10.0,"tie_word_embeddings":true}"#;
    compact_against_f32_expansion(ModelConfig::from_hf_json(gemma).unwrap());
}

/// GPT-2 keeps its Conv1D weights (in, out): the compact operand read as B untransposed in
/// the forward and transposed in the input gradient, and the learned positions gathered
/// from blocks as the tokens are.
#[test]
fn gpt2_lora_over_a_compact_base_trains_as_over_its_f32_expansion() {
    compact_against_f32_expansion(ModelConfig::from_hf_json(GPT2).unwrap());
}

/// A tiny GPT-2 whose Conv1D rows (3C, C, 4C wide) are whole 32-value blocks.
const GPT2: &str = r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2","vocab_size":2048,"n_embd":64,
    "n_head":4,"n_layer":2,"n_positions":128,"n_inner":null,"activation_function":"gelu_new",
    "layer_norm_epsilon":1e-5,"tie_word_embeddings":true}"#;

/// Every `--base` over a Hugging Face folder (the GPT-2 and Llama fixtures, f32
/// safetensors) trains as over the f32 values the base holds: the loader keeps each matrix
/// it can in the chosen form and the rest f32 (GPT-2's learned positions among them), and a
/// model built from the loaded tensors read back as f32 gives the same losses and adapter
/// gradients bit for bit. (A position table read as f32 while it held Q8_0 words once gave
/// GPT-2 a NaN loss.)
#[test]
fn every_base_over_hugging_face_files_trains_as_over_its_f32_values() {
    use webtune::load::base::Base;
    use webtune::load::model_from_hf_bytes_base;
    use webtune::model::Model;
    use webtune::train::Example;
    let g = gpu();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for fixture in ["gpt2", "llama"] {
        let config = std::fs::read_to_string(dir.join(fixture).join("config.json")).unwrap();
        let weights = std::fs::read(dir.join(fixture).join("model.safetensors")).unwrap();
        let cfg = ModelConfig::from_hf_json(&config).unwrap();
        let lora = LoraConfig::new(4, 8.0, LoraConfig::all_linear(cfg.arch));
        let mut rng = Rng::new(5);
        let examples: Vec<Example> = (0..3)
            .map(|i| {
                let len = 7 + 4 * i;
                let ids = (0..len).map(|_| (rng.next_u64() % cfg.vocab as u64) as u32).collect();
                Example::prompt_answer(ids, len / 2, format!("example {i}"))
            })
            .collect();
        for base in [Base::F16, Base::Bf16, Base::Q8_0, Base::Q4_0] {
            let what = format!("{fixture} over a {base:?} base");
            let load = || model_from_hf_bytes_base(g, &config, &[("model.safetensors", &weights)], Some(&lora), base);
            let compact = load().unwrap();
            let p = &compact.params;
            // Each matrix in the base's format where its rows hold that format's blocks
            // (the Llama fixture's 48-wide rows stay f32 under Q8_0 and Q4_0), the rest f32.
            for s in &p.specs {
                let want = s.may_be_compact().then(|| base.format_for(s.shape[0], s.shape[1], None)).flatten();
                let got = p.compact(p.id(&s.name).unwrap()).map(|c| c.format);
                assert_eq!(got, want, "{what}: {}", s.name);
            }
            assert!(fixture == "llama" || p.compact_bytes() > 0, "{what}: nothing compact");
            let expanded =
                Model::build(g, cfg.clone(), Some(&lora), |s| block(p.read(g, p.id(&s.name).unwrap()))).unwrap();
            let run = train_bits(g, load().unwrap(), &examples, 3);
            assert_same_bits(&what, &run, &train_bits(g, expanded, &examples, 3));
            assert!(run.0.iter().all(|l| f64::from_bits(*l).is_finite()), "{what}: losses {:?}", run.0);
        }
    }
}

fn compact_against_f32_expansion(cfg: ModelConfig) {
    use webtune::model::Model;
    use webtune::train::Example;
    let g = gpu();
    let lora = LoraConfig { dropout: 0.1, seed: 3, ..LoraConfig::new(4, 8.0, &["all-linear"]) };
    let format = |s: &ParamSpec| -> Option<CompactFormat> {
        use CompactFormat::*;
        if !s.may_be_compact() {
            return None;
        }
        Some(match () {
            _ if s.name.contains("embed_tokens") => Q8_0,
            _ if s.name.contains("self_attn") => Q4_0,
            _ if s.name.contains("gate_proj") => F16,
            _ if s.name.contains("up_proj") => BF16,
            _ => Q4_0,
        })
    };
    // The same random values for a name in both models.
    let values = |s: &ParamSpec| {
        let seed = s.name.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
        let mut rng = Rng::new(seed);
        if s.shape.len() == 2 {
            rng.vec(s.numel(), 0.05)
        } else {
            vec![1.0; s.numel()]
        }
    };
    let quantized = |s: &ParamSpec, f: CompactFormat| {
        CompactTensor::quantize(&s.name, f, s.shape[0], s.shape[1], &values(s)).unwrap()
    };
    let compact = Model::build_compact(g, cfg.clone(), Some(&lora), format, |s| {
        Ok(match format(s) {
            Some(f) => ParamInit::Compact(quantized(s, f)),
            None => ParamInit::F32(values(s)),
        })
    })
    .unwrap();
    assert!(compact.params.compact_bytes() > 0, "nothing was kept compact");
    let cfg_arch = cfg.arch;
    let expanded = Model::build(g, cfg, Some(&lora), |s| {
        Ok(match format(s) {
            Some(f) => quantized(s, f).dequantize(),
            None => values(s),
        })
    })
    .unwrap();
    assert_eq!(expanded.params.compact_bytes(), 0);

    let mut rng = Rng::new(11);
    let examples: Vec<Example> = (0..6)
        .map(|i| {
            let len = 9 + 5 * i;
            let ids = (0..len).map(|_| (rng.next_u64() % 2048) as u32).collect();
            Example::prompt_answer(ids, len / 2, format!("example {i}"))
        })
        .collect();
    let run_c = train_bits(g, compact, &examples, 4);
    assert_same_bits(
        &format!("{:?}: LoRA over the compact base against its f32 expansion", cfg_arch),
        &run_c,
        &train_bits(g, expanded, &examples, 4),
    );
    assert!(!run_c.1.is_empty());
    for (name, _, a) in &run_c.1 {
        assert!(a.iter().any(|&x| x != 0.0), "{name}: a zero gradient proves nothing");
    }
}
