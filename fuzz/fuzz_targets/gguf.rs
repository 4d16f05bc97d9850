//! The GGUF reader on arbitrary bytes: a typed error, or a file whose metadata maps to a
//! config or a named error, and whose every tensor dequantizes (or is refused) without a
//! panic. Counts and lengths come from the bytes, so this is where an unchecked
//! allocation would show.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webtune::load::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse("fuzz.gguf", data) else {
        return;
    };
    let _ = webtune::load::GgufInfo::from_gguf(&g);
    let _ = webtune::load::gguf_model::config_from_gguf(&g);
    for t in &g.tensors {
        if let Ok(v) = g.dequantize(t) {
            assert_eq!(v.len(), t.shape().iter().product::<usize>());
        }
    }
});
