//! Tokenizer and chat-template parity with transformers, on SmolLM2-135M-Instruct's
//! tokenizer (tests/fixtures/smollm2-tokenizer, made by make_tokenizer_fixture.py).

use std::path::PathBuf;

use serde_json::Value;
use webtune::tokenize::{ChatTemplate, Message, Tokenizer};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-tokenizer")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&read(name)).unwrap()
}

fn smollm2() -> Tokenizer {
    let chat = String::from_utf8(read("chat_template.jinja")).unwrap();
    Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(&read("tokenizer_config.json")))
        .unwrap()
        .with_chat_template(&chat)
        .unwrap()
}

/// Panics with the first differing byte (and some context) when `got != want`.
fn assert_same_text(what: &str, got: &str, want: &str) {
    if got == want {
        return;
    }
    let i = got.bytes().zip(want.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let ctx = |s: &str| {
        let mut a = i.saturating_sub(30).min(s.len());
        while !s.is_char_boundary(a) {
            a -= 1;
        }
        let mut b = (i + 30).min(s.len());
        while !s.is_char_boundary(b) {
            b += 1;
        }
        format!("{:?}", &s[a..b])
    };
    panic!(
        "{what}: first difference at byte {i} (lengths {} vs {})\n  got:  {}\n  want: {}",
        got.len(),
        want.len(),
        ctx(got),
        ctx(want)
    );
}

fn assert_same_ids(what: &str, got: &[u32], want: &[u32]) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: first different id at index {i} (lengths {} vs {})\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        &got[i.saturating_sub(3)..(i + 5).min(got.len())],
        &want[i.saturating_sub(3)..(i + 5).min(want.len())]
    );
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn special_tokens_from_config() {
    let t = smollm2();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1)); // <|im_start|> per the GGUF-built config
    assert_eq!(t.eos_ids(), vec![2]); // <|im_end|>
    assert!(t.is_special(0) && t.is_special(2) && !t.is_special(100));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(t.token_text(2), "<|im_end|>");
    let t = t.with_extra_eos(&[0, 2]);
    assert_eq!(t.eos_ids(), vec![2, 0]);
}

#[test]
fn encode_matches_transformers() {
    let t = smollm2();
    let cases = json("encode.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() > 30);
    for (i, c) in cases.iter().enumerate() {
        let text = c["text"].as_str().unwrap();
        let add = c["add_special"].as_bool().unwrap();
        let want = ids(&c["ids"]);
        let got = t.encode(text, add).unwrap();
        assert_same_ids(&format!("case {i} encode({text:?}, {add})"), &got, &want);
        if let Some(d) = c.get("decoded") {
            assert_same_text(&format!("case {i} decode"), &t.decode(&got).unwrap(), d.as_str().unwrap());
        }
        if let Some(d) = c.get("decoded_skip_special") {
            assert_same_text(
                &format!("case {i} decode skip"),
                &t.decode_skip_special(&got).unwrap(),
                d.as_str().unwrap(),
            );
        }
    }
}

#[test]
fn offsets_cover_the_text() {
    let t = smollm2();
    let text = "naïve 😀 日本 <|im_end|> x";
    let enc = t.encode_with_offsets(text, false).unwrap();
    // Byte-level BPE splits a 4-byte emoji into several tokens that all carry the
    // emoji's offsets, so starts only never decrease.
    let (mut start, mut end) = (0, 0);
    for (_, r) in &enc {
        assert!(r.start >= start && r.end <= text.len() && text.is_char_boundary(r.start), "{r:?}");
        assert!(r.start <= end, "gap before {r:?}");
        start = r.start;
        end = end.max(r.end);
    }
    assert_eq!(end, text.len());
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn chat_templates_match_transformers() {
    let t = smollm2();
    let fx = json("chat.json");
    let mut templates = std::collections::HashMap::new();
    templates.insert("smollm2".to_owned(), t.chat_template().unwrap());
    let owned: Vec<(String, ChatTemplate)> = fx["templates"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let mut c = ChatTemplate::new(v.as_str().unwrap()).unwrap_or_else(|e| panic!("template {k}: {e}"));
            c.bos_token = Some("<|im_start|>".into());
            c.eos_token = Some("<|im_end|>".into());
            (k.clone(), c)
        })
        .collect();
    for (k, c) in &owned {
        templates.insert(k.clone(), c);
    }
    let renders = fx["renders"].as_array().unwrap();
    assert!(renders.len() >= 40);
    for r in renders {
        let what = format!("{} / {} / agp={}", r["name"], r["template"], r["add_generation_prompt"]);
        let tmpl = templates[r["template"].as_str().unwrap()];
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = tmpl.render_json(&r["messages"], agp, r.get("tools")).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same_text(&what, &got, r["text"].as_str().unwrap());
        if r.get("tools").is_none() {
            let typed = tmpl.render(&messages(&r["messages"]), agp).unwrap();
            assert_same_text(&what, &typed, r["text"].as_str().unwrap());
        }
        assert_same_ids(&what, &t.encode(&got, false).unwrap(), &ids(&r["ids"]));
    }
    for e in fx["errors"].as_array().unwrap() {
        let tmpl = templates[e["template"].as_str().unwrap()];
        let err = tmpl.render_json(&e["messages"], false, None).unwrap_err().to_string();
        assert!(err.contains(e["message"].as_str().unwrap()), "{err}");
    }
}

#[test]
fn chat_template_from_config_json() {
    // Older tokenizer_config.json files carry the template inline (or as a named list).
    let src = String::from_utf8(read("chat_template.jinja")).unwrap();
    let mut cfg = json("tokenizer_config.json");
    cfg["chat_template"] = Value::String(src.clone());
    let t = Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(cfg.to_string().as_bytes())).unwrap();
    assert_eq!(t.chat_template().unwrap().source(), src);
    cfg["chat_template"] =
        serde_json::json!([{"name": "tool_use", "template": "x"}, {"name": "default", "template": src}]);
    let t = Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(cfg.to_string().as_bytes())).unwrap();
    assert_eq!(t.chat_template().unwrap().source(), src);
    let text = t.chat_template().unwrap().render(&[Message::new("user", "hi")], true).unwrap();
    assert!(text.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), "{text}");
}

#[test]
fn without_config_and_bad_inputs() {
    let t = Tokenizer::from_hf_bytes(&read("tokenizer.json"), None).unwrap();
    assert_eq!(t.bos_id(), None);
    assert_eq!(t.eos_ids(), vec![0]); // guessed: <|endoftext|>
    assert!(t.chat_template().is_none());
    assert!(t.require_chat_template().unwrap_err().to_string().contains("no chat template"));
    assert!(Tokenizer::from_hf_bytes(b"{not json", None).is_err());
    assert!(Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(b"[1,2]x")).is_err());
    let e = Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(br#"{"eos_token": "<nope>"}"#)).unwrap_err();
    assert!(e.to_string().contains("<nope>"), "{e}");
    let e = ChatTemplate::new("{% for m in messages %}").unwrap_err();
    assert!(e.to_string().starts_with("chat template:"), "{e}");
}

#[test]
fn tojson_like_python() {
    let t = ChatTemplate::new("{{ messages | tojson }}").unwrap();
    let v = serde_json::json!([{"content": "é \"q\" \n <b>", "n": 1.0, "k": 100000000000000000000.0}]);
    assert_eq!(t.render_json(&v, false, None).unwrap(), r#"[{"content": "é \"q\" \n <b>", "n": 1.0, "k": 1e+20}]"#);
    let t = ChatTemplate::new("{{ {'b': 1, 'a': [1.5, 1e-05, none, true]} | tojson }}|{{ messages | tojson(sort_keys=true) }}|{{ messages | tojson(separators=[',', ':']) }}").unwrap();
    assert_eq!(
        t.render_json(&serde_json::json!({"z": 1, "a": "\u{1}"}), false, None).unwrap(),
        r#"{"b": 1, "a": [1.5, 1e-05, null, true]}|{"a": "\u0001", "z": 1}|{"z":1,"a":"\u0001"}"#
    );
    let t = ChatTemplate::new("{{ messages | tojson(indent=2) }}").unwrap();
    assert_eq!(
        t.render_json(&serde_json::json!({"a": [1, {}], "b": []}), false, None).unwrap(),
        "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
    );
}

/// The tokenizer built from the default model's GGUF metadata (vocabulary, merges, token
/// types, `tokenizer.ggml.pre = smollm`, special ids, chat template) tokenizes and renders
/// exactly as transformers' tokenizer of the same model. (For this vocabulary llama.cpp's
/// `smollm` digit split and plain byte-level give the same ids: the merges hold no
/// space+digit pairs; checked with the Python `tokenizers` library when this was written.)
#[test]
fn the_gguf_tokenizer_matches_transformers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing: run scripts/fetch-model.sh", path.display());
        eprintln!("SKIPPED: {} is missing (scripts/fetch-model.sh fetches it)", path.display());
        return;
    }
    let bytes = std::fs::read(&path).unwrap();
    let g = webtune::load::gguf::Gguf::parse("smollm2.gguf", &bytes).unwrap();
    let info = webtune::load::GgufInfo::from_gguf(&g).unwrap();
    let t = Tokenizer::from_gguf(&info.tokenizer, info.chat_template.as_deref()).unwrap();
    let hf = smollm2();
    assert_eq!(t.eos_ids().first(), hf.eos_ids().first());
    assert_eq!(t.bos_id(), hf.bos_id());
    for (i, c) in json("encode.json").as_array().unwrap().iter().enumerate() {
        let text = c["text"].as_str().unwrap();
        let add = c["add_special"].as_bool().unwrap();
        let got = t.encode(text, add).unwrap();
        assert_same_ids(&format!("GGUF tokenizer case {i} encode({text:?}, {add})"), &got, &ids(&c["ids"]));
        if let Some(d) = c.get("decoded") {
            assert_same_text(&format!("GGUF tokenizer case {i} decode"), &t.decode(&got).unwrap(), d.as_str().unwrap());
        }
    }
    let fx = json("chat.json");
    let mut n = 0;
    for r in fx["renders"].as_array().unwrap().iter().filter(|r| r["template"] == "smollm2") {
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = t.require_chat_template().unwrap().render_json(&r["messages"], agp, r.get("tools")).unwrap();
        assert_same_text(&format!("GGUF chat template {}", r["name"]), &got, r["text"].as_str().unwrap());
        assert_same_ids(&format!("GGUF chat ids {}", r["name"]), &t.encode(&got, false).unwrap(), &ids(&r["ids"]));
        n += 1;
    }
    assert!(n >= 8, "{n} renders");
}

/// The real Qwen3 and Gemma 3 chat templates (tests/fixtures/chat-templates, copied from
/// TRL's originals by make_chat_template_fixture.py) render byte for byte as transformers
/// renders them: Qwen3's reverse loop over `messages[::-1]`, `namespace`, string methods
/// and reasoning stripping, its tools header with `tojson`; Gemma 3's system-prefix folding,
/// `trim`, `<bos>` and its alternation error; Qwen3's `enable_thinking = false` as a
/// template variable (`ChatTemplate::vars`).
#[test]
fn qwen3_and_gemma3_chat_templates_match_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat-templates");
    let fx: Value = serde_json::from_slice(&std::fs::read(dir.join("renders.json")).unwrap()).unwrap();
    let template = |name: &str| {
        let src = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let mut t = ChatTemplate::new(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
        t.bos_token = fx["bos_token"][name].as_str().map(str::to_owned);
        t
    };
    let (qwen3, gemma3) = (template("qwen3"), template("gemma3"));
    let mut no_thinking = template("qwen3");
    no_thinking.vars.insert("enable_thinking".into(), Value::Bool(false));
    let renders = fx["renders"].as_array().unwrap();
    assert!(renders.len() >= 40, "{} renders", renders.len());
    for r in renders {
        let pick = |name: &str| match (name, r.get("vars")) {
            ("qwen3", None) => &qwen3,
            ("qwen3", Some(v)) => {
                assert_eq!(v, &serde_json::json!({"enable_thinking": false}));
                &no_thinking
            }
            _ => &gemma3,
        };
        let what = format!(
            "{} / {} / agp={} / tools={}",
            r["template"],
            r["name"],
            r["add_generation_prompt"],
            r.get("tools").is_some()
        );
        let tmpl = pick(r["template"].as_str().unwrap());
        let agp = r["add_generation_prompt"].as_bool().unwrap();
        let got = tmpl.render_json(&r["messages"], agp, r.get("tools")).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same_text(&what, &got, r["text"].as_str().unwrap());
    }
    let pick = |name: &str| if name == "qwen3" { &qwen3 } else { &gemma3 };
    for e in fx["errors"].as_array().unwrap() {
        let err = pick(e["template"].as_str().unwrap()).render_json(&e["messages"], false, None).unwrap_err();
        assert!(err.to_string().contains(e["message"].as_str().unwrap()), "{err}");
    }
}
