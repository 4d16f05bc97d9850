//! The GGUF export (`webtune::export::gguf`): SmolLM2 from its Q4_1 GGUF exported in F32
//! re-loads bit for bit with identical metadata, and in F16 re-loads as the f16-rounded
//! weights; the tiny llama / qwen2 / gpt2 fixtures exported and re-loaded give the same
//! logits (and llama.cpp's converter layout: permuted q/k rows, transposed Conv1D, Gemma's
//! norms as w + 1, tests/fixtures/gemma3-gguf in the shape llama.cpp's gemma3 holds); a PEFT
//! adapter exported as GGUF is the merged model.
//!
//! llama.cpp's own reader (gguf-py) on the files these tests write — not run in CI, which
//! has no Python:
//!
//! ```sh
//! WEBTUNE_GGUF_EXPORT_DIR=/tmp/gguf-export cargo test --test gguf_export
//! python tests/fixtures/check_gguf_export.py /tmp/gguf-export   # needs `pip install gguf numpy`
//! ```
//!
//! The script checks every file's tensor names, types, shapes and metadata against what
//! `convert_hf_to_gguf.py` writes, the fixtures' values against their `model.safetensors`
//! with the converter's permutation and transposes, and the SmolLM2 exports tensor by
//! tensor against the original GGUF (values against gguf-py's own dequantization).
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "model/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::path::PathBuf;

use common::{block, check, f64s, gpu, Tol};
use fixture::{Fixture, ARCHS};
use half::f16;
use webtune::export::gguf::{export_gguf, rope_theta_and_factors, GgufDtype, GgufExport};
use webtune::export::merged::export_merged;
use webtune::export::peft::{import_adapter, parse_adapter_config, AdapterFiles};
use webtune::gpu::Gpu;
use webtune::load::compact::{dequantize_gguf, CompactFormat};
use webtune::load::gguf::{Gguf, Value};
use webtune::load::gguf_model::config_from_gguf;
use webtune::load::quantize::q8_0;
use webtune::load::{model_from_gguf_bytes, model_from_gguf_file, GgufInfo, GgufTokenizer};
use webtune::model::{Arch, Model, ModelConfig};
use webtune::ops::rope::default_inv_freq;
use webtune::train::{batch, Example, LossMode, TrainConfig, Trainer};
use webtune::Error;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where to leave the exported files for tests/fixtures/check_gguf_export.py, if asked.
fn save(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("WEBTUNE_GGUF_EXPORT_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        eprintln!("wrote {}", dir.join(name).display());
    }
}

/// Every parameter's values, by name.
fn params(g: &Gpu, m: &Model) -> Vec<(String, Vec<f32>)> {
    (0..m.params.specs.len()).map(|p| (m.params.specs[p].name.clone(), block(m.params.read(g, p)).unwrap())).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

/// The values a Q8_0 tensor holds: quantized (gguf-py's bytes, tests/gguf/quantize.rs) and
/// dequantized on the host (ggml's dequantize_row_q8_0, tests/gguf/dequant.rs).
fn q8_0_round(v: &[f32]) -> Vec<f32> {
    dequantize_gguf(CompactFormat::Q8_0, &q8_0(v))
}

/// Everything in a config, floats bit for bit.
fn config_of(c: &ModelConfig) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        (c.arch, c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim),
        (c.ffn, c.max_pos, c.tied, c.qkv_bias, c.o_bias, c.mlp_bias),
        c.norm_eps.to_bits(),
        bits(&c.inv_freq),
        c.eos_token_ids,
        c.bos_token_id,
        c.gemma
    )
}

/// Logits (len, V) of every position of `ids`.
fn all_logits(t: &mut Trainer, ids: &[u32]) -> Vec<f32> {
    let e = Example::prompt_answer(ids.to_vec(), 1, "logits");
    let mut mb = batch::plan(std::slice::from_ref(&e), LossMode::AllTokens, 1).unwrap().remove(0);
    mb.loss_rows = (0..ids.len() as u32).collect();
    mb.targets = vec![0; ids.len()];
    mb.weights = vec![0.0; ids.len()];
    block(t.logits(&mb)).unwrap()
}

fn tensor_types(bytes: &[u8]) -> Vec<(String, usize)> {
    GgufInfo::from_gguf(&Gguf::parse("x", bytes).unwrap()).unwrap().tensor_types
}

// ---- SmolLM2 -----------------------------------------------------------------------------

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn smollm2_path() -> Option<PathBuf> {
    let p = root().join("models").join(SMOLLM2);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing and CI is set: run scripts/fetch-model.sh", p.display());
    }
    eprintln!("SKIPPED: {} is missing (run scripts/fetch-model.sh)", p.display());
    None
}

#[test]
fn smollm2_round_trips_bit_exactly_in_f32_and_to_f16_or_q8_0_rounding_in_f16_or_q8_0() {
    let Some(path) = smollm2_path() else { return };
    let g = gpu();
    let original = std::fs::read(&path).unwrap();
    let orig = Gguf::parse(SMOLLM2, &original).unwrap();
    let (model, info) = model_from_gguf_file(g, &path).unwrap();
    let want = params(g, &model);
    let mut sizes = vec![];
    for dtype in [GgufDtype::F32, GgufDtype::F16, GgufDtype::Q8_0] {
        let opts = GgufExport {
            dtype,
            name: info.name.as_deref().unwrap_or(""),
            tokenizer: Some(&info.tokenizer),
            chat_template: info.chat_template.as_deref(),
        };
        let t0 = std::time::Instant::now();
        let bytes = block(export_gguf(g, &model, &opts)).unwrap();
        eprintln!("SmolLM2 {dtype:?}: {} bytes in {:.1}s", bytes.len(), t0.elapsed().as_secs_f64());
        save(&format!("smollm2-{dtype:?}.gguf").to_lowercase(), &bytes);
        let file = Gguf::parse("export.gguf", &bytes).unwrap();
        assert_eq!((file.version, file.alignment), (3, 32));

        // The same tensors, names and dims as the original (only the types differ).
        let dims = |g: &Gguf| {
            let mut v: Vec<(String, Vec<u64>)> = g.tensors.iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
            v.sort();
            v
        };
        assert_eq!(dims(&file), dims(&orig), "{dtype:?}: tensor names and dims");
        let order: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
        let orig_order: Vec<&str> = orig.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, orig_order, "{dtype:?}: the converter's tensor order");
        let expect_types: Vec<(String, usize)> = match dtype {
            GgufDtype::F32 => vec![("F32".into(), 272)],
            GgufDtype::F16 => vec![("F16".into(), 211), ("F32".into(), 61)],
            // SmolLM2's rows (576 and 1536 values) are whole 32-value blocks.
            GgufDtype::Q8_0 => vec![("F32".into(), 61), ("Q8_0".into(), 211)],
        };
        let mut got_types = tensor_types(&bytes);
        got_types.sort();
        assert_eq!(got_types, expect_types, "{dtype:?}: tensor types");

        // Metadata: every architecture and tokenizer key of the original, with the same
        // type and value; only descriptive `general.*` keys are left out.
        for (k, v) in &orig.metadata {
            match file.get(k) {
                Some(w) => {
                    if k != "general.file_type" && k != "general.type" {
                        assert_eq!(w, v, "{dtype:?}: metadata `{k}`");
                    }
                }
                None => assert!(
                    k.starts_with("general.") && k != "general.architecture" && k != "general.name",
                    "{dtype:?}: metadata `{k}` is missing"
                ),
            }
        }
        assert_eq!(file.get("general.file_type"), Some(&Value::U32(dtype.file_type())));
        for (k, _) in &file.metadata {
            assert!(orig.get(k).is_some(), "{dtype:?}: metadata `{k}` is not in the original");
        }

        let (back, back_info) = model_from_gguf_bytes(g, "export.gguf", &bytes).unwrap();
        assert_eq!(config_of(&back.cfg), config_of(&model.cfg), "{dtype:?}: config");
        assert_eq!(format!("{:?}", back_info.tokenizer), format!("{:?}", info.tokenizer), "{dtype:?}: tokenizer");
        assert_eq!(back_info.chat_template, info.chat_template);
        assert_eq!((&back_info.architecture, &back_info.name), (&info.architecture, &info.name));
        let got = params(g, &back);
        assert_eq!(got.len(), want.len());
        let mut rounded = 0;
        for ((n, w), (n2, v)) in want.iter().zip(&got) {
            assert_eq!(n, n2);
            let matrix = !n.contains("norm");
            let w = match dtype {
                GgufDtype::F16 if matrix => f16_round(w),
                GgufDtype::Q8_0 if matrix => q8_0_round(w),
                _ => w.clone(),
            };
            rounded += (dtype != GgufDtype::F32 && matrix) as usize;
            assert!(bits(&w) == bits(v), "{dtype:?}: `{n}` differs after the round trip");
        }
        eprintln!(
            "SmolLM2 {dtype:?}: {} parameters bit-identical to the {}loaded weights",
            got.len(),
            match dtype {
                GgufDtype::F32 => "",
                GgufDtype::F16 => "f16-rounded ",
                GgufDtype::Q8_0 => "Q8_0-rounded ",
            }
        );
        if dtype != GgufDtype::F32 {
            assert_eq!(rounded, 211);
        }
        sizes.push(bytes.len());
    }
    // Q8_0 stores 34 bytes per 32 values against F16's 64 (and the file's F32 vectors).
    let (f16, q8) = (sizes[1] as f64, sizes[2] as f64);
    eprintln!("SmolLM2: F16 {} bytes, Q8_0 {} bytes ({:.2}x)", sizes[1], sizes[2], q8 / f16);
    assert!(q8 < 0.56 * f16, "Q8_0 file {q8} bytes against F16 {f16}");
}

// ---- the tiny fixtures -------------------------------------------------------------------

/// A made-up tokenizer for the fixtures (which have none), so their files carry one.
fn toy_tokenizer(vocab: usize) -> GgufTokenizer {
    GgufTokenizer {
        model: "gpt2".into(),
        pre: Some("default".into()),
        tokens: (0..vocab).map(|i| format!("t{i}")).collect(),
        token_types: (0..vocab).map(|i| if i < 2 { 3 } else { 1 }).collect(),
        merges: vec!["t 1".into()],
        bos_id: Some(0),
        eos_id: Some(1),
        pad_id: Some(1),
        add_bos: Some(false),
        ..Default::default()
    }
}

/// f16 weights move the 2-layer models' logits by about 1e-3 of the largest.
const F16_LOGITS: Tol = Tol { name: "F16_LOGITS", abs: 1e-5, rel: 5e-3 };
/// Gemma's norm weights come back as (w + 1) - 1 in f32, each off by at most half an ulp of
/// 1 + w (6e-8): the logits could move by about that relative to the largest, far below
/// 1e-6. (In practice they do not move at all: the kernel's 1 + ((w + 1) - 1) rounds to
/// the stored w + 1 exactly.)
const PLUS_ONE_LOGITS: Tol = Tol { name: "PLUS_ONE_LOGITS", abs: 1e-7, rel: 1e-6 };
/// As tests/gguf/mapping.rs: the engine in f32 against transformers' float64 logits.
const TINY_LOGITS: Tol = Tol { name: "TINY_LOGITS", abs: 1e-6, rel: 1e-5 };

/// llama.cpp's `LlamaModel.permute` written as the converter does: rows reshaped to
/// (heads, 2, D/2), the last two axes swapped.
fn converter_permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = ((h * half + i) * 2 + j) * cols;
                let src = ((h * 2 + j) * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn tiny_fixtures_exported_and_reloaded_give_the_same_logits() {
    let g = gpu();
    for arch in ARCHS {
        // llama.cpp's gemma3 fixes what the gemma3 fixture varies (the layer pattern,
        // query_pre_attn_scalar): its GGUF twin has the shape the format can hold.
        let arch = if *arch == "gemma3" { "gemma3-gguf" } else { arch };
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let hf = params(g, &model);
        let tok = toy_tokenizer(model.cfg.vocab);
        let mut t = fx.trainer(g, LossMode::PerExample, 8);
        let want: Vec<Vec<f32>> = fx.examples.iter().map(|e| all_logits(&mut t, &e.ids)).collect();
        for dtype in [GgufDtype::F32, GgufDtype::F16] {
            let opts = GgufExport { dtype, name: arch, tokenizer: Some(&tok), chat_template: Some("{{ x }}") };
            let bytes = block(export_gguf(g, &model, &opts)).unwrap();
            save(&format!("{arch}-{dtype:?}.gguf").to_lowercase(), &bytes);
            let file = Gguf::parse("x.gguf", &bytes).unwrap();
            let cfg = config_from_gguf(&file).unwrap();
            let mut cfg_want = model.cfg.clone();
            cfg_want.bos_token_id = Some(0);
            cfg_want.eos_token_ids = vec![1];
            assert_eq!(config_of(&cfg), config_of(&cfg_want), "{arch}: config");
            // Tied models write no head; Qwen2's fixture is untied.
            assert_eq!(file.tensor("output.weight").is_some(), !model.cfg.tied, "{arch}: output.weight");
            if dtype == GgufDtype::F32 {
                // The converter's layout, checked on the stored bytes.
                let hf_of = |n: &str| hf.iter().find(|(k, _)| k == n).unwrap().1.clone();
                let stored = |n: &str| f32s(file.tensor_bytes(file.tensor(n).unwrap()));
                match model.cfg.arch {
                    Arch::Llama => {
                        let c = model.cfg.hidden;
                        let q = hf_of("model.layers.1.self_attn.q_proj.weight");
                        assert_eq!(
                            stored("blk.1.attn_q.weight"),
                            converter_permute(&q, q.len() / c, c, model.cfg.heads)
                        );
                        let k = hf_of("model.layers.1.self_attn.k_proj.weight");
                        let kv = model.cfg.kv_heads;
                        assert_eq!(stored("blk.1.attn_k.weight"), converter_permute(&k, k.len() / c, c, kv));
                        assert_eq!(stored("blk.1.attn_v.weight"), hf_of("model.layers.1.self_attn.v_proj.weight"));
                    }
                    Arch::Qwen2 => {
                        let q = "model.layers.1.self_attn.q_proj";
                        assert_eq!(stored("blk.1.attn_q.weight"), hf_of(&format!("{q}.weight")));
                        assert_eq!(stored("blk.1.attn_q.bias"), hf_of(&format!("{q}.bias")));
                    }
                    Arch::Qwen3 => {
                        // NeoX RoPE: q, k and their per-head norms stored unpermuted.
                        let a = "model.layers.1.self_attn";
                        assert_eq!(stored("blk.1.attn_q.weight"), hf_of(&format!("{a}.q_proj.weight")));
                        assert_eq!(stored("blk.1.attn_k.weight"), hf_of(&format!("{a}.k_proj.weight")));
                        assert_eq!(stored("blk.1.attn_q_norm.weight"), hf_of(&format!("{a}.q_norm.weight")));
                        assert_eq!(stored("blk.1.attn_k_norm.weight"), hf_of(&format!("{a}.k_norm.weight")));
                        let d = model.cfg.head_dim as u64;
                        assert_eq!(file.tensor("blk.1.attn_q_norm.weight").unwrap().dims, vec![d]);
                    }
                    Arch::Gemma3 => {
                        // The converter's norms are w + 1 (llama.cpp scales by the stored value).
                        let a = "model.layers.1";
                        for (gguf, hf_name) in [
                            ("blk.1.attn_q_norm", format!("{a}.self_attn.q_norm")),
                            ("blk.1.post_attention_norm", format!("{a}.post_attention_layernorm")),
                            ("blk.1.ffn_norm", format!("{a}.pre_feedforward_layernorm")),
                            ("blk.1.post_ffw_norm", format!("{a}.post_feedforward_layernorm")),
                            ("output_norm", "model.norm".into()),
                        ] {
                            let plus_one: Vec<f32> =
                                hf_of(&format!("{hf_name}.weight")).iter().map(|w| w + 1.0).collect();
                            assert_eq!(stored(&format!("{gguf}.weight")), plus_one, "{gguf}");
                        }
                        assert_eq!(stored("blk.1.attn_q.weight"), hf_of(&format!("{a}.self_attn.q_proj.weight")));
                    }
                    Arch::Gpt2 => {
                        let c = model.cfg.hidden;
                        let w = hf_of("transformer.h.1.attn.c_attn.weight"); // (C, 3C)
                        let t: Vec<f32> = (0..3 * c * c).map(|k| w[(k % c) * 3 * c + k / c]).collect();
                        assert_eq!(stored("blk.1.attn_qkv.weight"), t);
                        assert_eq!(file.tensor("blk.1.attn_qkv.weight").unwrap().dims, vec![c as u64, 3 * c as u64]);
                    }
                }
            }
            let (back, info) = model_from_gguf_bytes(g, "x.gguf", &bytes).unwrap();
            assert_eq!(format!("{:?}", info.tokenizer), format!("{tok:?}"));
            assert_eq!(info.chat_template.as_deref(), Some("{{ x }}"));
            let got = params(g, &back);
            for ((n, w), (_, v)) in hf.iter().zip(&got) {
                let is_matrix = back.params.specs.iter().find(|s| &s.name == n).unwrap().shape.len() == 2;
                let w =
                    if dtype == GgufDtype::F16 && is_matrix && !n.contains("wpe") { f16_round(w) } else { w.clone() };
                // Gemma's norms travel as w + 1 (f32): what comes back is (w + 1) - 1.
                let plus_one = model.cfg.arch == Arch::Gemma3 && n.contains("norm");
                let w = if plus_one { w.iter().map(|x| (x + 1.0) - 1.0).collect() } else { w };
                assert!(bits(&w) == bits(v), "{arch} {dtype:?}: `{n}` after the round trip");
            }
            let mut tb = Trainer::new(g, back, TrainConfig::default()).unwrap();
            let mut worst = 0f64;
            for (i, e) in fx.examples.iter().enumerate() {
                let got = all_logits(&mut tb, &e.ids);
                match dtype {
                    GgufDtype::F32 if model.cfg.arch == Arch::Gemma3 => {
                        // (w + 1) - 1 moves a norm weight by at most half an ulp of 1 + w.
                        let w = f64s(&want[i]);
                        worst = worst.max(check(&format!("{arch} F32 logits {i}"), &got, &w, PLUS_ONE_LOGITS));
                        let truth = &fx.expected[&format!("logits.{i}")].1;
                        check(&format!("{arch} exported logits {i}"), &got, truth, TINY_LOGITS);
                    }
                    GgufDtype::F32 => {
                        assert!(bits(&got) == bits(&want[i]), "{arch}: F32 logits of example {i} differ");
                        let truth = &fx.expected[&format!("logits.{i}")].1;
                        check(&format!("{arch} exported logits {i}"), &got, truth, TINY_LOGITS);
                    }
                    // (Q8_0: its own test below.)
                    GgufDtype::F16 | GgufDtype::Q8_0 => {
                        let w = f64s(&want[i]);
                        worst = worst.max(check(&format!("{arch} F16 logits {i}"), &got, &w, F16_LOGITS));
                    }
                }
            }
            match dtype {
                GgufDtype::F32 if model.cfg.arch == Arch::Gemma3 => {
                    eprintln!("{arch} F32: norms as (w + 1) - 1, worst logit difference {worst:.2e} of the largest")
                }
                GgufDtype::F32 => eprintln!("{arch} F32: weights and logits bit-identical after the round trip"),
                GgufDtype::F16 | GgufDtype::Q8_0 => {
                    eprintln!("{arch} {dtype:?}: worst logit difference {worst:.2e} of the largest")
                }
            }
        }
    }
}

/// Q8_0 on the tiny fixtures: matrices whose file rows are whole 32-value blocks are Q8_0
/// (qwen2's hidden 32), the others fall back to F16 as the converter's `--outtype q8_0`
/// does (llama's hidden 48), vectors stay F32; the reloaded values are the host's
/// quantize-then-dequantize of the weights (rows kept whole: llama's RoPE permutation
/// moves whole rows, so per-row blocks are the same either way).
#[test]
fn q8_0_export_quantizes_whole_block_rows_and_keeps_the_rest_f16() {
    let g = gpu();
    for (arch, want_q8) in [("qwen2", true), ("llama", false)] {
        let fx = Fixture::load(arch);
        let model = fx.model(g);
        let hf = params(g, &model);
        let tok = toy_tokenizer(model.cfg.vocab);
        let opts = GgufExport { dtype: GgufDtype::Q8_0, name: arch, tokenizer: Some(&tok), chat_template: None };
        let bytes = block(export_gguf(g, &model, &opts)).unwrap();
        save(&format!("{arch}-q8_0.gguf"), &bytes);
        let file = Gguf::parse("x.gguf", &bytes).unwrap();
        assert_eq!(file.get("general.file_type"), Some(&Value::U32(7)));
        let types = tensor_types(&bytes);
        let count = |n: &str| types.iter().find(|(t, _)| t == n).map_or(0, |(_, c)| *c);
        let (back, _) = model_from_gguf_bytes(g, "x.gguf", &bytes).unwrap();
        let mut q8 = 0;
        for ((n, w), (_, v)) in hf.iter().zip(&params(g, &back)) {
            let shape = &back.params.specs.iter().find(|s| &s.name == n).unwrap().shape;
            let w = match shape.as_slice() {
                [_, cols] if cols % 32 == 0 => {
                    q8 += 1;
                    q8_0_round(w)
                }
                [_, _] => f16_round(w),
                _ => w.clone(),
            };
            assert!(bits(&w) == bits(v), "{arch} Q8_0: `{n}` after the round trip");
        }
        assert_eq!(count("Q8_0"), q8, "{arch}: Q8_0 tensors {types:?}");
        assert_eq!(q8 > 0, want_q8, "{arch}: {types:?}");
        assert!(count("F16") > 0 || want_q8, "{arch}: rows of 48 must fall back to F16: {types:?}");
        eprintln!("{arch} Q8_0: {types:?}, values equal to the host's Q8_0 round trip");
    }
}

// ---- LoRA --------------------------------------------------------------------------------

/// As tests/lora.rs: the merged weights (W + s B A rounded once) against the adapter on
/// the side.
const MERGED: Tol = Tol { name: "MERGED", abs: 1e-6, rel: 1e-5 };

#[test]
fn a_lora_model_exported_as_gguf_is_the_merged_model() {
    let g = gpu();
    for arch in ARCHS {
        let fx = Fixture::load(arch);
        let d = root().join("tests/fixtures/lora").join(arch);
        let files = AdapterFiles {
            config_json: std::fs::read_to_string(d.join("adapter_config.json")).unwrap(),
            safetensors: std::fs::read(d.join("adapter_model.safetensors")).unwrap(),
        };
        let lcfg = parse_adapter_config(&files.config_json).unwrap();
        let lora = webtune::load::model_from_hf_dir_lora(g, &fx.dir, Some(&lcfg)).unwrap();
        import_adapter(g, &lora, &files).unwrap();
        let mut t = Trainer::new(g, lora, TrainConfig::default()).unwrap();
        // One step so every B is non-zero and A has moved.
        block(t.step(&fx.examples)).unwrap();

        let opts = GgufExport { name: "merged", ..Default::default() };
        if arch == &"gemma3" {
            // The fixture's layer pattern and score scale are not llama.cpp's gemma3: refused
            // by name rather than written as a model llama.cpp would run differently.
            match block(export_gguf(g, &t.model, &opts)) {
                Err(Error::Config(m)) => assert!(m.contains("every 6th layer global"), "{m}"),
                other => panic!("gemma3: {:?}", other.map(|b| b.len())),
            }
            continue;
        }
        let bytes = block(export_gguf(g, &t.model, &opts)).unwrap();
        save(&format!("lora-{arch}-f32.gguf"), &bytes);
        let file = Gguf::parse("m.gguf", &bytes).unwrap();
        assert!(file.tensors.iter().all(|t| !t.name.contains("lora")));
        let (back, _) = model_from_gguf_bytes(g, "m.gguf", &bytes).unwrap();
        assert!(back.lora.is_none());

        // The same weights as the merged Hugging Face export.
        let config = std::fs::read_to_string(fx.dir.join("config.json")).unwrap();
        let hf = block(export_merged(g, &t.model, &config)).unwrap();
        let merged =
            webtune::load::model_from_hf_bytes(g, &hf.config_json, &[("model.safetensors", &hf.safetensors)]).unwrap();
        for ((n, w), (n2, v)) in params(g, &merged).iter().zip(&params(g, &back)) {
            assert_eq!(n, n2);
            assert!(bits(w) == bits(v), "{arch}: `{n}` differs from the merged HF export");
        }

        let mut m = Trainer::new(g, back, TrainConfig::default()).unwrap();
        let mut worst = 0f64;
        for (i, e) in fx.examples.iter().enumerate() {
            let want = f64s(&all_logits(&mut t, &e.ids));
            worst =
                worst.max(check(&format!("{arch} GGUF merged logits {i}"), &all_logits(&mut m, &e.ids), &want, MERGED));
        }
        eprintln!("{arch}: LoRA model vs its GGUF export, worst relative logit difference {worst:.2e}");
    }
}

// ---- pieces ------------------------------------------------------------------------------

#[test]
fn rope_base_is_recovered_exactly_and_scaling_becomes_factors() {
    for theta in [10000.0f32, 100000.0, 500000.0, 1000000.0, 10000000.0, 1234.5] {
        for d in [8, 32, 64, 128] {
            let inv = default_inv_freq(theta, d);
            let (t, f) = rope_theta_and_factors(&inv, d);
            assert_eq!((t, f), (theta, None), "theta {theta}, D {d}");
        }
    }
    // Linear scaling by 4: the base survives, every factor is 4.
    let inv: Vec<f32> = default_inv_freq(500000.0, 64).iter().map(|x| x / 4.0).collect();
    let (t, f) = rope_theta_and_factors(&inv, 64);
    assert_eq!(t, 500000.0);
    let f = f.unwrap();
    assert!(f.iter().all(|x| (x - 4.0).abs() < 1e-5), "{f:?}");
    // Whatever the frequencies, base and factors give them back.
    let inv: Vec<f32> = (0..16).map(|i| 1.0 / (1.0 + i as f32).powi(3)).collect();
    let (t, f) = rope_theta_and_factors(&inv, 32);
    let back: Vec<f32> = default_inv_freq(t, 32).iter().zip(f.unwrap()).map(|(b, s)| b / s).collect();
    for (a, b) in back.iter().zip(&inv) {
        assert!((a - b).abs() <= 1e-6 * b, "{a} vs {b}");
    }
}

#[test]
fn scaled_rope_goes_to_rope_freqs_for_llama_and_is_refused_for_qwen2() {
    let g = gpu();
    for arch in ["llama", "qwen2"] {
        let fx = Fixture::load(arch);
        let mut model = fx.model(g);
        model.cfg.inv_freq.iter_mut().for_each(|x| *x /= 2.0);
        let r = block(export_gguf(g, &model, &GgufExport::default()));
        match arch {
            "llama" => {
                let bytes = r.unwrap();
                let file = Gguf::parse("s.gguf", &bytes).unwrap();
                let t = file.tensor("rope_freqs.weight").expect("rope_freqs.weight");
                assert_eq!(file.dequantize(t).unwrap(), vec![2.0; model.cfg.head_dim / 2]);
                assert_eq!(config_from_gguf(&file).unwrap().inv_freq, model.cfg.inv_freq);
            }
            _ => match r {
                Err(Error::Config(m)) => assert!(m.contains("only be written for llama"), "{m}"),
                other => panic!("{:?}", other.map(|b| b.len())),
            },
        }
    }
}

#[test]
fn a_tokenizer_that_does_not_fit_is_a_named_error() {
    let g = gpu();
    let model = Fixture::load("llama").model(g);
    let v = model.cfg.vocab;
    let cases: Vec<(GgufTokenizer, &str)> = vec![
        (toy_tokenizer(v + 1), "the tokenizer has 98 tokens but the model only 97 embeddings"),
        (GgufTokenizer { eos_id: Some(v as u32), ..toy_tokenizer(v) }, "tokenizer.ggml.eos_token_id 97 is outside"),
        (
            GgufTokenizer { token_types: vec![1; 3], ..toy_tokenizer(v) },
            "the tokenizer has 3 token types for 97 tokens",
        ),
        (GgufTokenizer { model: String::new(), ..toy_tokenizer(v) }, "the tokenizer has no model"),
    ];
    for (tok, needle) in cases {
        let opts = GgufExport { tokenizer: Some(&tok), ..Default::default() };
        match block(export_gguf(g, &model, &opts)) {
            Err(Error::Config(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{:?}", other.map(|b| b.len())),
        }
    }
}
