//! The JSONL dataset parser must never panic, whatever the bytes: every line either
//! becomes a record or a typed error naming its line.
//!
//! Run (verified with the stable toolchain; `--dev --sanitizer none` keeps the build of
//! the whole crate light):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --dev --sanitizer none jsonl -- -max_total_time=20`
//! (`cargo +nightly fuzz run jsonl` with a nightly toolchain and AddressSanitizer).
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
