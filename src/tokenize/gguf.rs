//! A tokenizer from a GGUF file's metadata: llama.cpp stores the BPE vocabulary, merges,
//! token types and the *name* of its pre-tokenizer (`tokenizer.ggml.pre`). This builds the
//! equivalent `tokenizer.json` (the pre-tokenizer each name stands for in llama.cpp, which
//! is also what the model's own Hugging Face tokenizer does) and loads it like any other.

use serde_json::{json, Value};

use super::Tokenizer;
use crate::error::{Error, Result};
use crate::load::GgufTokenizer;

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

fn byte_level(add_prefix_space: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer llama.cpp applies for `pre` (llama-vocab.cpp's regex lists).
fn pre_tokenizer(pre: &str) -> Result<Value> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        // GPT-2's byte-level regex.
        "gpt2" | "default" | "gpt-2" => byte_level(false, true),
        // SmolLM: every digit alone, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(false, true)]}),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false, false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false, false)]}),
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (gpt2, smollm, llama-bpe, qwen2)"
            )))
        }
    })
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes, with its chat template when it has one.
    pub fn from_gguf(t: &GgufTokenizer, chat_template: Option<&str>) -> Result<Tokenizer> {
        if t.model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model `{}` is not supported (only byte-level BPE, `gpt2`); load the model's \
                 Hugging Face folder for its tokenizer.json instead",
                t.model
            )));
        }
        if t.tokens.is_empty() {
            return Err(Error::Tokenizer("the GGUF file has no tokenizer.ggml.tokens".into()));
        }
        let pre = pre_tokenizer(t.pre.as_deref().unwrap_or("default"))?;
        let vocab: serde_json::Map<String, Value> =
            t.tokens.iter().enumerate().map(|(i, s)| (s.clone(), json!(i))).collect();
        let added: Vec<Value> = t
            .tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(t.token_types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
            .map(|(i, s)| {
                json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": t.token_types[i] == CONTROL})
            })
            .collect();
        let tokenizer_json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": byte_level(true, true),
            "decoder": byte_level(true, true),
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": t.merges},
        });
        let name = |id: Option<u32>| id.and_then(|i| t.tokens.get(i as usize)).cloned();
        let mut config = json!({
            "add_bos_token": t.add_bos.unwrap_or(false),
            "add_eos_token": t.add_eos.unwrap_or(false),
        });
        for (key, id) in
            [("bos_token", t.bos_id), ("eos_token", t.eos_id), ("pad_token", t.pad_id), ("unk_token", t.unk_id)]
        {
            if let Some(s) = name(id) {
                config[key] = json!(s);
            }
        }
        if let Some(src) = chat_template {
            config["chat_template"] = json!(src);
        }
        let tok = Tokenizer::from_hf_bytes(tokenizer_json.to_string().as_bytes(), Some(config.to_string().as_bytes()))?;
        // The end-of-turn token (e.g. <|im_end|>) also stops generation.
        Ok(match t.eot_id {
            Some(eot) => tok.with_extra_eos(&[eot]),
            None => tok,
        })
    }
}
