//! Datasets: every JSONL format to ids + trained masks, on SmolLM2's tokenizer; masks
//! checked against transformers' assistant masks (tests/fixtures/smollm2-tokenizer).

use std::path::PathBuf;

use serde_json::Value;
use webtune::data::{self, DataErrorKind, DataOptions, Record};
use webtune::rng::Rng;
use webtune::session::{dataset, Settings};
use webtune::tokenize::{Message, Tokenizer};
use webtune::train::Example;
use webtune::Error;

fn read(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-tokenizer").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn smollm2() -> Tokenizer {
    let chat = String::from_utf8(read("chat_template.jinja")).unwrap();
    Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(&read("tokenizer_config.json")))
        .unwrap()
        .with_chat_template(&chat)
        .unwrap()
}

const IM_END: u32 = 2;

fn load(tok: &Tokenizer, text: &str, opts: &DataOptions) -> Vec<Example> {
    data::load_jsonl(tok, "t.jsonl", text, opts).unwrap_or_else(|e| panic!("{e}")).0
}

fn one(tok: &Tokenizer, line: &str) -> Example {
    load(tok, line, &DataOptions::default()).remove(0)
}

/// The trained tokens' text, run by run.
fn trained_runs(tok: &Tokenizer, ex: &Example) -> Vec<String> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut prev = false;
    for (i, (&id, &t)) in ex.ids.iter().zip(&ex.trained).enumerate() {
        let t = t && i > 0;
        if t && !prev {
            runs.push(Vec::new());
        }
        if t {
            runs.last_mut().unwrap().push(id);
        }
        prev = t;
    }
    runs.iter().map(|r| tok.decode(r).unwrap()).collect()
}

#[test]
fn text_format_trains_everything_and_eos() {
    let tok = smollm2();
    let ex = one(&tok, r#"{"text": "Hello world, 日本!"}"#);
    let mut want = tok.encode("Hello world, 日本!", true).unwrap();
    want.push(tok.eos_id().unwrap());
    assert_eq!(ex.ids, want);
    assert!(ex.trained.iter().all(|&t| t));
    assert_eq!(ex.origin, "t.jsonl:1");
}

#[test]
fn plain_prompt_completion() {
    let tok = smollm2();
    let ex = one(&tok, r#"{"prompt": "Translate to French: cat ->", "completion": " chat"}"#);
    let mut want = tok.encode("Translate to French: cat -> chat", true).unwrap();
    want.push(IM_END);
    assert_eq!(ex.ids, want);
    assert_eq!(trained_runs(&tok, &ex), vec![" chat<|im_end|>"]);
    let n_prompt = tok.encode("Translate to French: cat ->", true).unwrap().len();
    assert!(ex.trained[..n_prompt].iter().all(|&t| !t));
    assert_eq!(ex.trained.last(), Some(&true));
}

#[test]
fn plain_prompt_completion_as_chat() {
    let tok = smollm2();
    let opts = DataOptions { plain_as_chat: true, ..Default::default() };
    let ex = load(&tok, r#"{"prompt": "2+2?", "completion": "4"}"#, &opts).remove(0);
    let text = tok
        .chat_template()
        .unwrap()
        .render(&[Message::new("user", "2+2?"), Message::new("assistant", "4")], false)
        .unwrap();
    assert_eq!(ex.ids, tok.encode(&text, false).unwrap());
    assert_eq!(trained_runs(&tok, &ex), vec!["4<|im_end|>"]);
}

/// The chat masks equal transformers' `return_assistant_tokens_mask` with the SmolLM2
/// template wrapped in {% generation %} (answer content + <|im_end|>, not the newline).
#[test]
fn chat_masks_match_transformers() {
    let tok = smollm2();
    let fx: Value = serde_json::from_slice(&read("chat.json")).unwrap();
    let mut n = 0;
    for r in fx["renders"].as_array().unwrap() {
        if r["template"] != "smollm2_generation"
            || r["add_generation_prompt"] == true
            || r.get("assistant_mask").is_none()
        {
            continue;
        }
        let line = serde_json::json!({"messages": r["messages"]}).to_string();
        let ex = one(&tok, &line);
        let ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mask: Vec<bool> = r["assistant_mask"].as_array().unwrap().iter().map(|x| x.as_u64() == Some(1)).collect();
        assert_eq!(ex.ids, ids, "{}", r["name"]);
        if ex.trained != mask {
            let i = ex.trained.iter().zip(&mask).position(|(a, b)| a != b).unwrap();
            panic!("{}: mask differs first at token {i} ({:?})", r["name"], tok.token_text(ex.ids[i]));
        }
        n += 1;
    }
    assert!(n >= 4, "{n}");
}

#[test]
fn chat_all_turns_and_last_turn_only() {
    let tok = smollm2();
    let line = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}"#;
    let ex = one(&tok, line);
    assert_eq!(trained_runs(&tok, &ex), vec!["Hello!<|im_end|>", "Goodbye.<|im_end|>"]);
    let opts = DataOptions { last_turn_only: true, ..Default::default() };
    let last = load(&tok, line, &opts).remove(0);
    assert_eq!(last.ids, ex.ids);
    assert_eq!(trained_runs(&tok, &last), vec!["Goodbye.<|im_end|>"]);
    // The end-of-turn token is trained, the newline after it is not.
    let k = ex.ids.len() - 2;
    assert_eq!((ex.ids[k], ex.trained[k], ex.trained[k + 1]), (IM_END, true, false));
    // A conversation that ends with a user turn trains the earlier answers.
    let ex = one(
        &tok,
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}"#,
    );
    assert_eq!(trained_runs(&tok, &ex), vec!["b<|im_end|>"]);
}

#[test]
fn conversational_prompt_completion() {
    let tok = smollm2();
    let line = r#"{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name?"}], "completion": [{"role": "assistant", "content": "SmolLM."}]}"#;
    let ex = one(&tok, line);
    assert_eq!(trained_runs(&tok, &ex), vec!["SmolLM.<|im_end|>"]);
    let msgs = [
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "Name?"),
        Message::new("assistant", "SmolLM."),
    ];
    let text = tok.chat_template().unwrap().render(&msgs, false).unwrap();
    assert_eq!(ex.ids, tok.encode(&text, false).unwrap());
}

#[test]
fn tokenized_format_kept() {
    let ex = data::parse_tokenized_jsonl(
        "t.jsonl",
        "{\"input_ids\": [5, 6, 7, 8], \"prompt_len\": 2}\n\n{\"input_ids\": [1, 2, 3], \"trained\": [0, 1, true]}",
    )
    .unwrap();
    assert_eq!(ex[0].trained, vec![false, false, true, true]);
    assert_eq!(ex[1].trained, vec![false, true, true]);
    assert_eq!(ex[1].origin, "t.jsonl:3");
    let e = data::parse_tokenized_jsonl("t.jsonl", r#"{"text": "x"}"#).unwrap_err();
    assert!(e.to_string().contains("t.jsonl:1: a text line needs a tokenizer"), "{e}");
    // Through the tokenizer path too.
    let tok = smollm2();
    assert_eq!(one(&tok, r#"{"input_ids": [5, 6, 7], "prompt_len": 1}"#).trained, vec![false, true, true]);
}

#[test]
fn truncation_prompt_left_then_answer_right() {
    let tok = smollm2();
    let prompt = "one two three four five six seven eight nine ten";
    let line = format!(r#"{{"prompt": "{prompt}", "completion": " yes"}}"#);
    let full = one(&tok, &line);
    let n = full.ids.len();
    let n_answer = full.trained.iter().filter(|&&t| t).count(); // " yes" + EOS
    assert_eq!(n_answer, 2);
    // Cut 3 prompt tokens from the left.
    let (ex, rep) =
        data::load_jsonl(&tok, "t.jsonl", &line, &DataOptions { max_len: Some(n - 3), ..Default::default() }).unwrap();
    assert_eq!(ex[0].ids, full.ids[3..]);
    assert_eq!(ex[0].trained, full.trained[3..]);
    assert_eq!((rep.truncated_prompt, rep.truncated_answer), (1, 0));
    assert!(rep.warning().unwrap().contains("t.jsonl:1"), "{:?}", rep.warning());
    // Too long even with one prompt token left: the answer loses its end.
    let (ex, rep) =
        data::load_jsonl(&tok, "t.jsonl", &line, &DataOptions { max_len: Some(2), ..Default::default() }).unwrap();
    assert_eq!(ex[0].ids, full.ids[n - 3..n - 1]);
    assert_eq!(ex[0].trained, vec![false, true]);
    assert_eq!((rep.truncated_prompt, rep.truncated_answer), (0, 1));
    // Nothing to cut: no warning.
    let (_, rep) =
        data::load_jsonl(&tok, "t.jsonl", &line, &DataOptions { max_len: Some(n), ..Default::default() }).unwrap();
    assert_eq!(rep.warning(), None);
    assert!(data::load_jsonl(&tok, "t.jsonl", &line, &DataOptions { max_len: Some(1), ..Default::default() }).is_err());
}

/// The one data preparation (`session::dataset`, what the CLI and the page both run):
/// the seeded split, the evaluation file, `val_limit`, errors naming the file and line.
#[test]
fn validation_split() {
    let tok = smollm2();
    let text: String = (0..20).map(|i| format!("{{\"text\": \"example {i}\"}}\n")).collect();
    let s = |share: f64, seed: u64| Settings { val_share: share, seed, ..Default::default() };
    let read = |name: &str, text: &str, st: &Settings| dataset::read(Some(&tok), name, text, st, 1024, 49152);
    let file = read("t.jsonl", &text, &s(0.25, 7)).unwrap();
    assert_eq!(file.format, "text");
    let a = dataset::split(&file, None, &s(0.25, 7)).unwrap();
    let b = dataset::split(&file, None, &s(0.25, 7)).unwrap();
    let c = dataset::split(&file, None, &s(0.25, 8)).unwrap();
    assert_eq!((a.train.len(), a.valid.len()), (15, 5));
    assert_eq!(a.valid, b.valid);
    assert_ne!(a.valid, c.valid);
    let mut all: Vec<String> = a.train.iter().chain(&a.valid).map(|e| e.example.origin.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20);
    let limited = dataset::split(&file, None, &Settings { val_limit: 2, ..s(0.25, 7) }).unwrap();
    assert_eq!(limited.valid, a.valid[..2].to_vec());
    let eval = read("v.jsonl", "{\"text\": \"held out\"}", &s(0.0, 7)).unwrap();
    let v = dataset::split(&file, Some(&eval), &s(0.25, 7)).unwrap();
    assert_eq!((v.train.len(), v.valid.len()), (20, 1), "an evaluation file wins over the share");
    assert_eq!(v.valid[0].example.origin, "v.jsonl:1");
    let e = read("v.jsonl", "{\"text\": 3}", &s(0.0, 7)).unwrap_err();
    assert!(e.to_string().contains("v.jsonl:1"), "{e}");
    let e = read("v.jsonl", "{\"input_ids\": [1, 2, 99999], \"prompt_len\": 1}", &s(0.0, 7)).unwrap_err();
    assert!(e.to_string().contains("v.jsonl:1") && e.to_string().contains("99999"), "{e}");
    assert!(data::split(file.items.clone(), 1.0, 1).is_err());
    assert!(data::split(file.items[..1].to_vec(), 0.5, 1).is_err());
}

#[test]
fn mask_preview() {
    let tok = smollm2();
    let ex = one(
        &tok,
        r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A b"}]}"#,
    );
    let p = data::preview(&tok, &ex);
    assert_eq!(p.len(), ex.ids.len());
    assert_eq!(p.iter().map(|t| t.text.as_str()).collect::<String>(), tok.decode(&ex.ids).unwrap());
    assert_eq!(
        data::preview_string(&tok, &ex),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n[[A b<|im_end|>]]\n"
    );
}

/// Every bad input: its kind and its message, named by file and line.
#[test]
fn bad_inputs_name_file_line_and_kind() {
    use DataErrorKind::*;
    let tok = smollm2();
    let cases: &[(&str, DataErrorKind, &str)] = &[
        ("{\"text\": ", InvalidJson, "invalid JSON"),
        ("[1, 2]", InvalidJson, "expected a JSON object, found a list"),
        ("\"text\"", InvalidJson, "found a string"),
        ("{}", MissingField, "no known format"),
        ("{\"txt\": \"a\"}", MissingField, "no known format"),
        ("{\"text\": \"\"}", EmptyField, "`text` is empty"),
        ("{\"text\": 5}", WrongType, "`text` must be a string, found a number"),
        ("{\"text\": null}", MissingField, "missing field `text`"),
        ("{\"prompt\": \"a\"}", MissingField, "missing field `completion`"),
        ("{\"completion\": \"a\"}", MissingField, "missing field `prompt`"),
        ("{\"prompt\": \"\", \"completion\": \"a\"}", EmptyField, "`prompt` is empty"),
        ("{\"prompt\": \"a\", \"completion\": \"\"}", EmptyAnswer, "`completion` is empty"),
        ("{\"prompt\": \"a\", \"completion\": 3}", WrongType, "`completion` must be a string or a list"),
        ("{\"prompt\": {}, \"completion\": \"a\"}", WrongType, "`prompt` must be a string or a list"),
        ("{\"prompt\": \"a\", \"completion\": [{\"role\": \"assistant\", \"content\": \"b\"}]}", WrongType, "both be strings or both be lists"),
        ("{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], \"completion\": [{\"role\": \"user\", \"content\": \"b\"}]}", WrongRole, "must be from the assistant"),
        ("{\"prompt\": [{\"role\": \"system\", \"content\": \"a\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"b\"}]}", WrongRole, "`prompt` needs a user message"),
        ("{\"messages\": \"hi\"}", WrongType, "`messages` must be a list of messages, found a string"),
        ("{\"messages\": []}", EmptyField, "`messages` is empty"),
        ("{\"messages\": [1]}", WrongType, "`messages[0]` must be an object"),
        ("{\"messages\": [{\"content\": \"a\"}]}", MissingField, "`messages[0]` has no `role`"),
        ("{\"messages\": [{\"role\": \"user\"}]}", MissingField, "`messages[0]` (user) has no `content`"),
        ("{\"messages\": [{\"role\": 1, \"content\": \"a\"}]}", WrongType, "`messages[0].role` must be a string"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": [\"a\"]}]}", WrongType, "`messages[0].content` must be a string, found a list"),
        ("{\"messages\": [{\"role\": \"tool\", \"content\": \"a\"}]}", WrongRole, "`messages[0].role` is \"tool\""),
        ("{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"}]}", WrongRole, "must be from the user, found \"assistant\""),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}", WrongRole, "a system message may only come first"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"\"}]}", EmptyAnswer, "`messages[1].content` (assistant) is empty"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}", EmptyField, "`messages[0].content` (user) is empty"),
        ("{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"a\"}]}", NoAssistant, "no assistant turn"),
        ("{\"input_ids\": []}", EmptyField, "`input_ids` is empty"),
        ("{\"input_ids\": [1, -2]}", WrongType, "non-negative integers"),
        ("{\"input_ids\": [1, 2], \"prompt_len\": 2}", WrongType, "`prompt_len` must be an integer below"),
        ("{\"input_ids\": [1, 2], \"trained\": [1]}", WrongType, "`trained` has 1 entries for 2 tokens"),
    ];
    for (line, kind, msg) in cases {
        // The bad line is line 3, after a good line and a blank one.
        let text = format!("{{\"text\": \"ok\"}}\n\n{line}\n{{\"text\": \"ok\"}}");
        let err = data::load_jsonl(&tok, "bad.jsonl", &text, &DataOptions::default()).unwrap_err();
        let Error::Dataset(d) = &err else { panic!("{line}: not a dataset error: {err}") };
        assert_eq!((d.file.as_str(), d.line, d.kind), ("bad.jsonl", 3, *kind), "{line}: {err}");
        assert!(d.message.contains(msg), "{line}: message {:?} lacks {msg:?}", d.message);
        assert!(err.to_string().starts_with("data: bad.jsonl:3: "), "{err}");
    }
    // Whole-file problems.
    let err = data::load_jsonl(&tok, "empty.jsonl", "\n  \n", &DataOptions::default()).unwrap_err();
    let Error::Dataset(d) = &err else { panic!() };
    assert_eq!((d.line, d.kind), (0, NoExamples));
    assert_eq!(err.to_string(), "data: empty.jsonl: no examples");
    // Chat data without a chat template.
    let plain = webtune::tokenize::Tokenizer::from_hf_bytes(&read("tokenizer.json"), None).unwrap();
    let err = data::load_jsonl(
        &plain,
        "c.jsonl",
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
        &DataOptions::default(),
    )
    .unwrap_err();
    let Error::Dataset(d) = &err else { panic!() };
    assert_eq!((d.line, d.kind), (1, Template));
    // A template that raises: the message comes through.
    let raising = webtune::tokenize::Tokenizer::from_hf_bytes(&read("tokenizer.json"), None)
        .unwrap()
        .with_chat_template("{{ raise_exception('roles must alternate') }}")
        .unwrap();
    let err = data::load_jsonl(
        &raising,
        "c.jsonl",
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
        &DataOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("roles must alternate"), "{err}");
}

/// A bounded fuzz on stable Rust: random and mutated JSONL lines through the parser and
/// the tokenizer/template path; nothing may panic, and every accepted line must give a
/// well-formed example.
#[test]
fn fuzz_jsonl_no_panic() {
    let tok = smollm2();
    let seeds = [
        r#"{"text": "hello 😀 world"}"#,
        r#"{"prompt": "a", "completion": "b"}"#,
        r#"{"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant", "content": "y"}]}"#,
        r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "日本"}, {"role": "assistant", "content": "<|im_end|>"}]}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " \n "}], "tools": [1]}"#,
        r#"{"input_ids": [1, 2, 3], "trained": [0, 1, 1]}"#,
        r#"{"input_ids": [4294967295, 0], "prompt_len": 1}"#,
    ];
    let alphabet: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\\",
        "\\u0000",
        "\\ud800",
        "null",
        "true",
        "1e999",
        "-0",
        "role",
        "content",
        "messages",
        "prompt",
        "completion",
        "text",
        "input_ids",
        "assistant",
        "user",
        "system",
        "<|im_end|>",
        "<|im_start|>",
        "é",
        "😀",
        " ",
        "\n",
        "\t",
        "{%",
        "%}",
        "{{",
        "}}",
    ];
    let mut rng = Rng::new(12345);
    let opts = [DataOptions::default(), DataOptions { max_len: Some(3), last_turn_only: true, plain_as_chat: true }];
    let mut accepted = 0;
    for iter in 0..4000 {
        let line: String = if iter % 4 == 0 {
            // pure random tokens from the alphabet
            (0..rng.next_u64() % 24).map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize]).collect()
        } else {
            let mut s: Vec<char> = seeds[(rng.next_u64() % seeds.len() as u64) as usize].chars().collect();
            for _ in 0..1 + rng.next_u64() % 4 {
                let pos = (rng.next_u64() % (s.len() as u64 + 1)) as usize;
                match rng.next_u64() % 4 {
                    0 if pos < s.len() => {
                        s.remove(pos);
                    }
                    1 => {
                        let a = alphabet[(rng.next_u64() % alphabet.len() as u64) as usize];
                        for (k, c) in a.chars().enumerate() {
                            s.insert(pos + k, c);
                        }
                    }
                    2 if pos < s.len() => s[pos] = char::from_u32((rng.next_u64() % 0x3000) as u32).unwrap_or('x'),
                    _ => {
                        let end = (pos + (rng.next_u64() % 8) as usize).min(s.len());
                        let dup: Vec<char> = s[pos..end].to_vec();
                        for (k, c) in dup.into_iter().enumerate() {
                            s.insert(pos + k, c);
                        }
                    }
                }
            }
            s.into_iter().collect()
        };
        let parsed = data::parse_line(&line);
        if let Ok(Some(rec)) = &parsed {
            let o = &opts[iter % 2];
            if let Ok(ex) = data::build_example(&tok, rec, o) {
                accepted += 1;
                assert_eq!(ex.ids.len(), ex.trained.len(), "{line}");
                assert!(ex.trained.iter().skip(1).any(|&t| t), "{line}");
                let _ = data::preview(&tok, &ex);
            }
            let _ = data::load_jsonl(&tok, "f.jsonl", &line, o);
            if let Record::Chat { .. } = rec {}
        }
    }
    assert!(accepted > 100, "{accepted}");
}

/// The tokenizer webtune builds from the GGUF metadata of the default model, the same
/// model as the fixture's tokenizer.json. None when models/ lacks the file, outside CI
/// only (CI fetches it: scripts/fetch-model.sh), as in tests/tokenize.rs.
fn smollm2_gguf() -> Option<Tokenizer> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing: run scripts/fetch-model.sh", path.display());
        eprintln!("SKIPPED (GGUF tokenizer): {} is missing (scripts/fetch-model.sh fetches it)", path.display());
        return None;
    }
    let bytes = std::fs::read(&path).unwrap();
    let g = webtune::load::gguf::Gguf::parse("smollm2.gguf", &bytes).unwrap();
    let info = webtune::load::GgufInfo::from_gguf(&g).unwrap();
    Some(Tokenizer::from_gguf(&info.tokenizer, info.chat_template.as_deref()).unwrap())
}

/// Both tokenizer sources of SmolLM2: the tokenizer.json and (when present) the GGUF.
fn both_sources() -> Vec<(&'static str, Tokenizer)> {
    let mut v = vec![("tokenizer.json", smollm2())];
    v.extend(smollm2_gguf().map(|t| ("GGUF", t)));
    v
}

fn id_list(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn mask_list(v: &Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|x| x.as_u64() == Some(1)).collect()
}

fn assert_same_mask(what: &str, tok: &Tokenizer, ex: &Example, ids: &[u32], mask: &[bool]) {
    assert_eq!(ex.ids, ids, "{what}: ids");
    if ex.trained != mask {
        let i = ex.trained.iter().zip(mask).position(|(a, b)| a != b).unwrap_or(mask.len().min(ex.trained.len()));
        panic!(
            "{what}: mask differs first at token {i} ({:?}): ours {}, want {}",
            ex.ids.get(i).map(|&id| tok.token_text(id)),
            data::preview_string(tok, ex),
            data::preview_string(tok, &Example { ids: ex.ids.clone(), trained: mask.to_vec(), origin: String::new() }),
        );
    }
}

/// Plain prompt/completion pairs whose boundary falls inside a token (a prompt ending in
/// a newline or a space and a completion starting with spaces, unicode split inside a
/// word): TRL's SFTTrainer masks (tests/fixtures/make_trl_mask_fixture.py: the completion
/// starts where the tokens of the prompt alone and of prompt + completion diverge),
/// for both tokenizer sources; the pairs whose prompt is not a prefix are reported.
#[test]
fn prompt_completion_masks_match_trl_for_every_tokenizer_source() {
    let fx: Value = serde_json::from_slice(&read("trl_masks.json")).unwrap();
    let pairs = fx["prompt_completion"].as_array().unwrap();
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| serde_json::json!({"prompt": p["prompt"], "completion": p["completion"]}).to_string())
        .collect();
    let want_mismatch: Vec<String> = pairs
        .iter()
        .enumerate()
        .filter(|(_, p)| p["mismatch"] == true)
        .map(|(i, _)| format!("t.jsonl:{}", i + 1))
        .collect();
    assert!(want_mismatch.len() >= 3, "{want_mismatch:?}");
    for (source, tok) in both_sources() {
        let (examples, rep) = data::load_jsonl(&tok, "t.jsonl", &lines.join("\n"), &DataOptions::default()).unwrap();
        for (p, ex) in pairs.iter().zip(&examples) {
            let what = format!("{source}: {}", p["name"]);
            assert_same_mask(&what, &tok, ex, &id_list(&p["ids"]), &mask_list(&p["completion_mask"]));
        }
        assert_eq!(rep.prompt_mismatch, want_mismatch.len(), "{source}");
        assert_eq!(rep.prompt_mismatch_at, want_mismatch[..want_mismatch.len().min(5)], "{source}");
        let w = rep.warning().unwrap();
        assert!(w.contains("not a prefix") && w.contains(&want_mismatch[0]), "{source}: {w}");
    }
}

/// Chat turns whose content starts (or ends) with whitespace that merges with the
/// template's newline: transformers' assistant masks, for both tokenizer sources, and the
/// existing chat fixture's masks with the GGUF tokenizer too.
#[test]
fn chat_masks_match_transformers_for_every_tokenizer_source() {
    let fx: Value = serde_json::from_slice(&read("trl_masks.json")).unwrap();
    let old: Value = serde_json::from_slice(&read("chat.json")).unwrap();
    let old = old["renders"].as_array().unwrap().iter().filter(|r| {
        r["template"] == "smollm2_generation"
            && r["add_generation_prompt"] == false
            && r.get("assistant_mask").is_some()
    });
    let cases: Vec<&Value> = fx["chat"].as_array().unwrap().iter().chain(old).collect();
    assert!(cases.len() >= 8, "{}", cases.len());
    for (source, tok) in both_sources() {
        for c in &cases {
            let line = serde_json::json!({"messages": c["messages"]}).to_string();
            let (ex, rep) = data::load_jsonl(&tok, "t.jsonl", &line, &DataOptions::default()).unwrap();
            let what = format!("{source}: chat {}", c["name"]);
            assert_same_mask(&what, &tok, &ex[0], &id_list(&c["ids"]), &mask_list(&c["assistant_mask"]));
            assert_eq!(rep.prompt_mismatch, 0);
        }
    }
}

/// Why masks must not come from offsets: the two sources tokenize alike but do not give
/// the same offsets (the GGUF tokenizer's byte-level post-processor trims spaces off them).
#[test]
fn the_tokenizer_sources_differ_in_offsets_only() {
    let Some(gguf) = smollm2_gguf() else { return };
    let hf = smollm2();
    let text = "Write the body:\n  return x + 1";
    let (a, b) = (hf.encode_with_offsets(text, true).unwrap(), gguf.encode_with_offsets(text, true).unwrap());
    let ids = |e: &[(u32, std::ops::Range<usize>)]| e.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(a, b, "the offsets agree now: the test above no longer needs two sources to catch a regression");
}

/// A tokenizer whose config appends EOS (add_eos_token): the prompt alone then ends with an
/// EOS that prompt + completion has only at its end; that is not a prompt mismatch, and
/// the sequence keeps one trained EOS. Mismatches in a validation file add to the report.
#[test]
fn prompt_mismatch_with_add_eos_and_validation_file() {
    let mut config: Value = serde_json::from_slice(&read("tokenizer_config.json")).unwrap();
    config["add_eos_token"] = Value::Bool(true);
    let tok = Tokenizer::from_hf_bytes(&read("tokenizer.json"), Some(config.to_string().as_bytes())).unwrap();
    assert_eq!(tok.encode("a", true).unwrap().last(), Some(&IM_END));
    let clean = r#"{"prompt": "Translate to French: cat ->", "completion": " chat"}"#;
    let (ex, rep) = data::load_jsonl(&tok, "t.jsonl", clean, &DataOptions::default()).unwrap();
    assert_eq!(rep.prompt_mismatch, 0);
    assert_eq!(rep.warning(), None);
    assert_eq!(trained_runs(&tok, &ex[0]), vec![" chat<|im_end|>"]);
    assert_eq!(ex[0].ids.iter().filter(|&&i| i == IM_END).count(), 1);

    let tok = smollm2();
    let merging = r#"{"prompt": "Write the body:\n", "completion": "  return x + 1"}"#;
    let train = format!("{clean}\n{merging}\n{merging}");
    let st = Settings::default();
    let a = dataset::read(Some(&tok), "a.jsonl", &train, &st, 1024, 49152).unwrap();
    let b = dataset::read(Some(&tok), "b.jsonl", merging, &st, 1024, 49152).unwrap();
    assert_eq!((a.report.prompt_mismatch, b.report.prompt_mismatch), (2, 1));
    assert_eq!(a.report.prompt_mismatch_at, ["a.jsonl:2", "a.jsonl:3"]);
    assert_eq!(b.report.prompt_mismatch_at, ["b.jsonl:1"]);
    let w = a.summary().warning.unwrap();
    assert!(w.starts_with("2 of 3 examples have a prompt whose tokens are not a prefix"), "{w}");
    assert_eq!(trained_runs(&tok, &a.items[1].example), vec!["\n  return x + 1<|im_end|>"]);
}
