//! The JSONL dataset parser must never panic, whatever the bytes: every line either
//! becomes a record or a typed error naming its line.
//!
//! Run: `cargo +nightly fuzz run jsonl` (from fuzz/), or every target briefly with
//! `bash scripts/fuzz-smoke.sh`. The fuzz crate builds webtune without its `gpu` feature,
//! so the instrumented build is the parsers and their dependencies only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webtune::data;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        let _ = data::parse_line(line);
    }
    match data::parse_jsonl("fuzz.jsonl", &text) {
        Ok(records) => assert!(!records.is_empty()),
        Err(e) => assert!(e.to_string().starts_with("fuzz.jsonl")),
    }
    let _ = data::parse_tokenized_jsonl("fuzz.jsonl", &text);
});
