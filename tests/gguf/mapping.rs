//! The llama / qwen2 / gpt2 mapping: the tiny transformers fixtures converted to GGUF the
//! way llama.cpp's converter does, loaded and run against transformers' logits.

use webtune::load::gguf::{Gguf, Value};
use webtune::load::gguf_model::{config_from_gguf, unpermute_rope_rows};
use webtune::load::model_from_gguf_bytes;
use webtune::train::{TrainConfig, Trainer};
use webtune::Error;

use crate::common::{check, gpu, Tol};
use crate::{all_logits, build, f32_tensor, fixtures, read_f32_safetensors, tensor, TensorSpec};

/// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), written the way the converter
/// writes it: rows reshaped to (heads, 2, D/2), the last two axes swapped.
fn converter_permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; w.len()];
    // out[h, i, j, :] = w[h, j, i, :]
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

#[test]
fn unpermute_inverts_the_converter() {
    let (rows, cols, heads) = (24, 5, 3);
    let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
    let p = converter_permute(&w, rows, cols, heads);
    assert_ne!(p, w);
    assert_eq!(unpermute_rope_rows(&p, heads, cols), w);
    // Head 0, D = 8: stored rows are HF rows 0, 4, 1, 5, 2, 6, 3, 7 (interleaved halves).
    let firsts: Vec<f32> = (0..8).map(|r| p[r * cols] / cols as f32).collect();
    assert_eq!(firsts, vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
}

/// Convert a tiny fixture folder (config.json + model.safetensors) to GGUF bytes the way
/// llama.cpp's convert_hf_to_gguf.py does (names, metadata, q/k permutation for llama,
/// Conv1D transposes and a copied `output.weight` for GPT-2), all tensors F32.
fn fixture_as_gguf(arch: &str) -> Vec<u8> {
    let dir = fixtures().join(arch);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| Value::U32(cfg[k].as_u64().unwrap() as u32);
    let f = |k: &str| Value::F32(cfg[k].as_f64().unwrap() as f32);
    let tensors = read_f32_safetensors(&dir.join("model.safetensors"));
    let mut meta: Vec<(String, Value)> = vec![("general.architecture".into(), Value::String(arch.into()))];
    let mut out = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let m = |k: &str, v: Value| (format!("{arch}.{k}"), v);
    match arch {
        "gpt2" => {
            meta.extend([
                m("context_length", u("n_positions")),
                m("embedding_length", u("n_embd")),
                m("feed_forward_length", Value::U32(4 * cfg["n_embd"].as_u64().unwrap() as u32)),
                m("block_count", u("n_layer")),
                m("attention.head_count", u("n_head")),
                m("attention.layer_norm_epsilon", f("layer_norm_epsilon")),
            ]);
            for name in names {
                let (shape, v) = &tensors[name];
                let n = name.strip_prefix("transformer.").unwrap_or(name);
                let (stem, suffix) = n.rsplit_once('.').unwrap();
                let g = match stem {
                    "wte" => "token_embd".to_string(),
                    "wpe" => "position_embd".to_string(),
                    "ln_f" => "output_norm".to_string(),
                    s => {
                        let (layer, part) = s.strip_prefix("h.").unwrap().split_once('.').unwrap();
                        let p = match part {
                            "ln_1" => "attn_norm",
                            "attn.c_attn" => "attn_qkv",
                            "attn.c_proj" => "attn_output",
                            "ln_2" => "ffn_norm",
                            "mlp.c_fc" => "ffn_up",
                            "mlp.c_proj" => "ffn_down",
                            other => panic!("{other}"),
                        };
                        format!("blk.{layer}.{p}")
                    }
                };
                let gname = format!("{g}.{suffix}");
                if shape.len() == 2 && stem.contains(".attn.") || stem.contains(".mlp.") && shape.len() == 2 {
                    // Conv1D (in, out) -> transposed (out, in): ggml dims [in, out].
                    let (i, o) = (shape[0], shape[1]);
                    let t: Vec<f32> = (0..o * i).map(|k| v[(k % i) * o + k / i]).collect();
                    out.push(f32_tensor(&gname, &[i as u64, o as u64], &t));
                } else {
                    let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
                    out.push(f32_tensor(&gname, &dims, v));
                    if stem == "wte" {
                        out.push(f32_tensor("output.weight", &dims, v));
                    }
                }
            }
        }
        _ => {
            let heads = cfg["num_attention_heads"].as_u64().unwrap() as usize;
            let kv = cfg["num_key_value_heads"].as_u64().unwrap() as usize;
            let theta = cfg["rope_parameters"]["rope_theta"].as_f64().unwrap() as f32;
            meta.extend([
                m("context_length", u("max_position_embeddings")),
                m("embedding_length", u("hidden_size")),
                m("feed_forward_length", u("intermediate_size")),
                m("block_count", u("num_hidden_layers")),
                m("attention.head_count", u("num_attention_heads")),
                m("attention.head_count_kv", u("num_key_value_heads")),
                m("rope.freq_base", Value::F32(theta)),
                m("attention.layer_norm_rms_epsilon", f("rms_norm_eps")),
            ]);
            if let Some(hd) = cfg["head_dim"].as_u64() {
                meta.push(m("attention.key_length", Value::U32(hd as u32)));
                meta.push(m("attention.value_length", Value::U32(hd as u32)));
                meta.push(m("rope.dimension_count", Value::U32(hd as u32)));
            }
            for name in names {
                let (shape, v) = &tensors[name];
                let gname = match name.as_str() {
                    "model.embed_tokens.weight" => "token_embd.weight".to_string(),
                    "model.norm.weight" => "output_norm.weight".to_string(),
                    "lm_head.weight" => "output.weight".to_string(),
                    n => {
                        let rest = n.strip_prefix("model.layers.").unwrap();
                        let (layer, part) = rest.split_once('.').unwrap();
                        let (part, suffix) = part.rsplit_once('.').unwrap();
                        let p = match part {
                            "input_layernorm" => "attn_norm",
                            "self_attn.q_proj" => "attn_q",
                            "self_attn.k_proj" => "attn_k",
                            "self_attn.v_proj" => "attn_v",
                            "self_attn.o_proj" => "attn_output",
                            // Qwen3's per-head norms (convert_hf_to_gguf.py's Qwen3Model).
                            "self_attn.q_norm" => "attn_q_norm",
                            "self_attn.k_norm" => "attn_k_norm",
                            "post_attention_layernorm" => "ffn_norm",
                            "mlp.gate_proj" => "ffn_gate",
                            "mlp.up_proj" => "ffn_up",
                            "mlp.down_proj" => "ffn_down",
                            other => panic!("{other}"),
                        };
                        format!("blk.{layer}.{p}.{suffix}")
                    }
                };
                let mut v = v.clone();
                if arch == "llama" && (name.contains("q_proj") || name.contains("k_proj")) {
                    let h = if name.contains("q_proj") { heads } else { kv };
                    let cols = if shape.len() == 2 { shape[1] } else { 1 };
                    v = converter_permute(&v, shape[0], cols, h);
                }
                let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
                out.push(f32_tensor(&gname, &dims, &v));
            }
        }
    }
    let meta_ref: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    build(3, 32, &meta_ref, &out)
}

/// Everything in a config but its floats, for comparison.
fn shape_of(c: &webtune::model::ModelConfig) -> String {
    format!(
        "{:?} {:?}",
        (c.arch, c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim),
        (c.ffn, c.max_pos, c.tied, c.qkv_bias, c.o_bias, c.mlp_bias)
    )
}

/// The same tolerance as tests/model/parity.rs: the engine in f32 against float64 truth.
const TINY_LOGITS: Tol = Tol { name: "TINY_LOGITS", abs: 1e-6, rel: 1e-5 };

#[test]
fn tiny_fixtures_as_gguf_match_transformers() {
    let g = gpu();
    for arch in ["llama", "qwen2", "gpt2", "qwen3"] {
        let bytes = fixture_as_gguf(arch);
        let parsed = Gguf::parse(arch, &bytes).unwrap();
        let cfg = config_from_gguf(&parsed).unwrap();
        let hf = webtune::model::ModelConfig::from_hf_json(
            &std::fs::read_to_string(fixtures().join(arch).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(shape_of(&cfg), shape_of(&hf), "{arch}: config from GGUF vs config.json");
        assert_eq!(cfg.norm_eps, hf.norm_eps);
        assert_eq!(cfg.inv_freq, hf.inv_freq);
        let (model, info) = model_from_gguf_bytes(g, &format!("{arch}.gguf"), &bytes).unwrap();
        assert_eq!(info.architecture, arch);
        let fx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(arch).join("fixture.json")).unwrap())
                .unwrap();
        let expected = read_f32_safetensors(&fixtures().join(arch).join("expected.safetensors"));
        let mut t = Trainer::new(g, model, TrainConfig::default()).unwrap();
        for (i, e) in fx["examples"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u32> = e["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let got = all_logits(&mut t, &ids);
            let want: Vec<f64> = expected[&format!("logits.{i}")].1.iter().map(|&x| x as f64).collect();
            let worst = check(&format!("{arch} (GGUF) logits of example {i}"), &got, &want, TINY_LOGITS);
            eprintln!("{arch} from GGUF, example {i}: worst logit error {worst:.2e} of the largest");
        }
    }
}

#[test]
fn mapping_errors_are_named() {
    let g = gpu();
    // GPT-2 with an output head that differs from the embedding.
    let mut bytes = fixture_as_gguf("gpt2");
    let parsed = Gguf::parse("gpt2.gguf", &bytes).unwrap();
    let o = parsed.tensor("output.weight").unwrap();
    let at = parsed.data_start + o.offset as usize;
    bytes[at] ^= 0x40;
    match model_from_gguf_bytes(g, "gpt2.gguf", &bytes) {
        Err(Error::Weights(m)) => assert!(m.contains("only a tied head is supported"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // An architecture the engine does not run.
    let b = build(3, 32, &[("general.architecture", Value::String("mamba".into()))], &[]);
    match model_from_gguf_bytes(g, "m.gguf", &b) {
        Err(Error::Config(m)) => assert!(m.contains("m.gguf: architecture `mamba` is not supported"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A llama file whose q weight has the wrong shape.
    let bytes = fixture_as_gguf("llama");
    let p = Gguf::parse("l", &bytes).unwrap();
    let mut meta: Vec<(String, Value)> = p.metadata.clone();
    meta.retain(|(k, _)| k != "llama.feed_forward_length");
    let meta_ref: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let b = build(3, 32, &meta_ref, &[]);
    match model_from_gguf_bytes(g, "l.gguf", &b) {
        Err(Error::Config(m)) => assert!(m.contains("metadata `llama.feed_forward_length` is missing"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let ts: Vec<TensorSpec> = p
        .tensors
        .iter()
        .filter(|t| t.name != "blk.1.attn_q.weight")
        .map(|t| tensor(&t.name, &t.dims, t.ty.id, p.tensor_bytes(t).to_vec()))
        .chain([f32_tensor("blk.1.attn_q.weight", &[48, 40], &[0.0; 48 * 40])])
        .collect();
    let meta_ref: Vec<(&str, Value)> = p.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let b = build(3, 32, &meta_ref, &ts);
    match model_from_gguf_bytes(g, "l.gguf", &b) {
        Err(Error::Weights(m)) => assert!(
            m.contains("l.gguf: tensor `blk.1.attn_q.weight` has dims [48, 40] (innermost first), but `model.layers.1.self_attn.q_proj.weight` of shape [48, 48] needs [48, 48]"),
            "{m}"
        ),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A qwen3 file without one of its per-head norms.
    let bytes = fixture_as_gguf("qwen3");
    let p = Gguf::parse("q", &bytes).unwrap();
    let ts: Vec<TensorSpec> = p
        .tensors
        .iter()
        .filter(|t| t.name != "blk.0.attn_k_norm.weight")
        .map(|t| tensor(&t.name, &t.dims, t.ty.id, p.tensor_bytes(t).to_vec()))
        .collect();
    let meta_ref: Vec<(&str, Value)> = p.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    match model_from_gguf_bytes(g, "q.gguf", &build(3, 32, &meta_ref, &ts)) {
        Err(Error::Weights(m)) => assert!(m.contains("blk.0.attn_k_norm.weight") && m.contains("q.gguf"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
