//! The safetensors loader on arbitrary bytes: parsing must return a typed error or a file
//! whose every tensor converts (or is refused) without a panic, and no allocation may be
//! sized by a number the bytes chose without a check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webtune::load::safetensors::File;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = File::parse("fuzz.safetensors", data) else {
        return;
    };
    for name in file.names() {
        let t = file.find(name).expect("a listed tensor is found");
        let shape = t.shape().to_vec();
        if let Ok(v) = t.to_f32(&shape) {
            assert_eq!(v.len(), shape.iter().product::<usize>());
        }
        // The wrong shape is refused, never converted.
        let mut wrong = shape.clone();
        wrong.push(1);
        assert!(t.to_f32(&wrong).is_err());
    }
});
