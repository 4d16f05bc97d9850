//! Every preset is a real model's shape: it parses, builds its parameter specs, and
//! `memory::estimate` sizes a LoRA and a full run of it (no GPU, nothing allocated; the
//! big ones are not trained here).
#![cfg(not(target_arch = "wasm32"))]

use webtune::model::lora::LoraConfig;
use webtune::model::memory::estimate;
use webtune::model::presets::{preset, PRESETS};
use webtune::model::{arch, Arch};

/// (preset, parameters): transformers' count for the same config.json
/// (`sum(p.numel() for p in Model(config).parameters())` on the meta device, tied heads
/// once), which for the published checkpoints is their model card's size (SmolLM2-135M
/// 134.5M, Qwen2.5-0.5B 494M, Llama-3.2-1B 1.24B, Qwen3-1.7B 1.72B with its tied head):
/// an engine parameter tree that differs from transformers' shows as a wrong count.
const PARAMS: &[(&str, usize)] = &[
    ("smollm2-135m", 134_515_008),
    ("smollm2-360m", 361_821_120),
    ("qwen2.5-0.5b", 494_032_768),
    ("qwen2.5-1.5b", 1_543_714_304),
    ("llama3.2-1b", 1_235_814_400),
    ("qwen3-0.6b", 596_049_920),
    ("qwen3-1.7b", 1_720_574_976),
    ("gemma3-270m", 268_098_176),
    ("gemma3-1b", 999_885_952),
];

#[test]
fn every_preset_parses_and_is_sized_before_allocation() {
    for (name, _) in PRESETS {
        let cfg = preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (specs, _) = arch::build(&cfg);
        let n: usize = specs.iter().map(|s| s.numel()).sum();
        if let Some((_, want)) = PARAMS.iter().find(|(p, _)| p == name) {
            assert_eq!(n, *want, "{name}: parameter count");
        }
        let lora = LoraConfig { rank: 16, ..LoraConfig::new(16, 32.0, &["all-linear"]) };
        let e = estimate(&cfg, Some(&lora), 4, 256).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The whole base is frozen, in f32, each tensor padded to 256 bytes at most.
        let pad = 256 * specs.len() as u64;
        assert!((4 * n as u64..=4 * n as u64 + pad).contains(&e.frozen_weights), "{name}: {e}");
        let full = estimate(&cfg, None, 1, 128).unwrap();
        assert_eq!(full.frozen_weights, 0, "{name}");
        eprintln!("{name}: {n} parameters; LoRA r16 all-linear 4 x 256: {e}");
    }
    for name in PARAMS.iter().map(|p| p.0) {
        assert!(PRESETS.iter().any(|(p, _)| *p == name), "preset {name} is missing");
    }
}

/// The shapes that set the new families apart: Qwen3's head size apart from hidden / heads
/// and its per-head norms, Llama 3.2's scaled RoPE.
#[test]
fn the_new_families_have_their_own_shapes() {
    let q = preset("qwen3-0.6b").unwrap();
    assert_eq!((q.arch, q.head_dim, q.q_dim(), q.hidden), (Arch::Qwen3, 128, 2048, 1024));
    assert!(q.qk_norm && q.tied && !q.qkv_bias);
    let (specs, _) = arch::build(&q);
    let qn = specs.iter().find(|s| s.name == "model.layers.27.self_attn.q_norm.weight").unwrap();
    assert_eq!(qn.shape, vec![128]);
    let l = preset("llama3.2-1b").unwrap();
    // llama3 scaling divides the low frequencies by 32 and keeps the high ones.
    let plain = webtune::model::config::default_inv_freq(500000.0, 64);
    assert_eq!(l.inv_freq[0], plain[0]);
    assert!((l.inv_freq[31] as f64 - plain[31] as f64 / 32.0).abs() < 1e-12 * plain[31] as f64 + 1e-20);
    assert!(l.tied);
    // Gemma 3: head_dim 256 over 640, every 6th layer global, its own score scale and
    // embedding scale, four norms per block plus the q/k norms.
    let g = preset("gemma3-270m").unwrap();
    assert_eq!((g.arch, g.head_dim, g.q_dim(), g.kv_dim(), g.layers), (Arch::Gemma3, 256, 1024, 256, 18));
    let gm = g.gemma.as_ref().unwrap();
    let globals: Vec<usize> = (0..g.layers).filter(|&i| !gm.sliding[i]).collect();
    assert_eq!(globals, vec![5, 11, 17]);
    assert_eq!((gm.window, gm.attn_scale, gm.embed_scale, gm.final_softcap), (512, 0.0625, 640f32.sqrt(), None));
    assert_eq!(gm.local_inv_freq, webtune::model::config::default_inv_freq(10000.0, 256));
    assert_eq!(g.inv_freq, webtune::model::config::default_inv_freq(1e6, 256));
    assert!(g.tied && g.qk_norm);
    let (specs, _) = arch::build(&g);
    for n in ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"]
    {
        assert!(specs.iter().any(|s| s.name == format!("model.layers.17.{n}.weight") && s.shape == vec![640]), "{n}");
    }
    // The attention kernel stops short of 256 for now: the model refuses to build, by name.
    assert!(g.check_kernels().is_err() || g.head_dim <= webtune::model::config::MAX_HEAD_SIZE);
}

/// Qwen3 configs the engine cannot run are typed errors, not panics: sliding-window
/// attention switched on, a head size the attention kernel does not take (at parse time when
/// it is not a multiple of 4; past MAX_HEAD_SIZE when a model is built, by
/// `check_kernels`, so that such a shape can still be sized by `memory::estimate`); and
/// Qwen3Config's own default head_dim (128) applies when config.json leaves it out.
#[test]
fn qwen3_configs_that_cannot_run_are_config_errors() {
    let base = r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":97,"hidden_size":32,"intermediate_size":64,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":128"#;
    let cfg = |extra: &str| webtune::model::ModelConfig::from_hf_json(&format!("{base}{extra}}}"));
    assert_eq!(cfg("").unwrap().head_dim, 128);
    assert_eq!(cfg(r#","head_dim":16"#).unwrap().q_dim(), 64);
    // Gemma 3's head size: the attention kernels take up to 256.
    assert_eq!(cfg(r#","head_dim":256"#).unwrap().q_dim(), 1024);
    for (extra, needle) in [
        (r#","use_sliding_window":true"#, "use_sliding_window"),
        (r#","head_dim":130"#, "head size 130"),
        (r#","head_dim":260"#, "head size 260"),
    ] {
        match cfg(extra).and_then(|c| c.check_kernels().map(|_| c)) {
            Err(webtune::Error::Config(m)) => assert!(m.contains(needle), "{extra}: {m}"),
            other => panic!("{extra}: {other:?}"),
        }
    }
}

/// Issue 9's memory targets with a 4-bit base (`--base q4_k`: Q4_K where a row holds
/// 256-value blocks, Q4_0 elsewhere; `--base q4_0`), LoRA r16 on every linear layer,
/// micro-batches of 4 x 256, activation checkpointing: what `memory::estimate_compact`
/// (equal to what the workspace and parameter store allocate, tests/model/compact.rs and
/// tests/lora.rs) says each model needs. The figures are printed by kind.
#[test]
fn a_four_bit_base_fits_the_issue_s_memory_targets() {
    use webtune::load::base::Base;
    use webtune::model::memory::{estimate_compact, param_specs};
    use webtune::model::WorkspaceOpts;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    // (preset, target MiB)
    for (name, target) in [
        ("qwen2.5-0.5b", 800.0),
        ("qwen3-0.6b", 900.0),
        ("gemma3-270m", 500.0),
        ("llama3.2-1b", 1433.6),
        ("qwen2.5-1.5b", 1843.2),
    ] {
        let cfg = preset(name).unwrap();
        let lora = LoraConfig::new(16, 32.0, &["all-linear"]);
        let mut best = f64::INFINITY;
        for base in [Base::Q4K, Base::Q4_0] {
            // The formats `--base` picks for each frozen matrix, as the loaders do.
            let specs = param_specs(&cfg, Some(&lora)).unwrap();
            let of = |s: &webtune::model::ParamSpec| {
                s.may_be_compact().then(|| base.format_for(s.shape[0], s.shape[1], None)).flatten()
            };
            assert!(specs.iter().any(|s| of(s).is_some()), "{name}: nothing compact");
            let e = estimate_compact(&cfg, Some(&lora), 4, 256, WorkspaceOpts::default(), of).unwrap();
            eprintln!("{name} LoRA r16 4x256 over a {base:?} base: {:.0} MiB ({e})", mib(e.total()));
            best = best.min(mib(e.total()));
        }
        assert!(best <= target, "{name}: {best:.0} MiB over a 4-bit base, the issue's target {target} MiB");
    }
}

/// Gemma 3 configs the engine cannot run are typed errors naming the setting, not panics
/// or silently different models; Gemma3TextConfig's defaults apply where config.json
/// leaves a field out (head_dim 256, every 6th layer global).
#[test]
fn gemma3_configs_that_cannot_run_are_config_errors() {
    let base = r#"{"architectures":["Gemma3ForCausalLM"],"vocab_size":97,"hidden_size":32,"intermediate_size":64,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":128"#;
    let cfg = |extra: &str| webtune::model::ModelConfig::from_hf_json(&format!("{base}{extra}}}"));
    let d = cfg("").unwrap();
    assert_eq!((d.head_dim, d.gemma.as_ref().unwrap().sliding.clone()), (256, vec![true, true]));
    assert_eq!(cfg(r#","sliding_window_pattern":2"#).unwrap().gemma.unwrap().sliding, vec![true, false]);
    for (extra, needle) in [
        (r#","attn_logit_softcapping":50.0"#, "attn_logit_softcapping"),
        (r#","hidden_activation":"gelu""#, "hidden_activation"),
        (r#","use_bidirectional_attention":true"#, "use_bidirectional_attention"),
        (r#","layer_types":["sliding_attention"]"#, "layer_types"),
        (r#","layer_types":["sliding_attention","chunked_attention"]"#, "layer_types"),
        (r#","final_logit_softcapping":-1.0"#, "final_logit_softcapping"),
        (r#","query_pre_attn_scalar":0"#, "query_pre_attn_scalar"),
        (r#","rope_scaling":{"rope_type":"linear","factor":8.0}"#, "rope_scaling"),
        (r#","rope_parameters":{"full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1e6}}"#, "linear"),
        (r#","sliding_window":0"#, "sliding_window"),
    ] {
        match cfg(extra) {
            Err(webtune::Error::Config(m)) => assert!(m.contains(needle), "{extra}: {m}"),
            other => panic!("{extra}: {other:?}"),
        }
    }
}
