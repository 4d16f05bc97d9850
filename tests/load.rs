//! Malformed safetensors: every one is a typed `Error::Weights` naming the file (and the
//! tensor, where there is one), never a panic, and never an allocation sized by a number
//! the file chose without a check.

mod common;

use common::gpu;
use webtune::error::Error;
use webtune::load::safetensors::File;
use webtune::load::{model_from_hf_bytes, shard_names};

const NAME: &str = "bad.safetensors";

/// A safetensors file: the 8-byte little-endian header length, the header, the data.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Parse, then convert every tensor at its own shape: the first error, as text.
fn load_err(bytes: &[u8]) -> String {
    let r = File::parse(NAME, bytes).and_then(|f| {
        for n in f.names() {
            let t = f.find(n).unwrap();
            let shape = t.shape().to_vec();
            t.to_f32(&shape)?;
        }
        Ok(())
    });
    match r {
        Err(Error::Weights(m)) => {
            assert!(m.starts_with(NAME), "the message names the file: {m}");
            m
        }
        Err(e) => panic!("expected Error::Weights, got {e:?}"),
        Ok(()) => panic!("malformed input accepted"),
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn a_good_file_loads() {
    let b =
        st(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#, &f32s(&[1.0, -2.0]));
    let f = File::parse(NAME, &b).unwrap();
    assert_eq!(f.names(), ["a"]);
    assert_eq!(f.find("a").unwrap().to_f32(&[2]).unwrap(), [1.0, -2.0]);
}

#[test]
fn header_length_past_the_end() {
    let b = st(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &f32s(&[1.0]));
    for n in [b.len() as u64 - 7, 1 << 20, 1 << 40, u64::MAX, u64::MAX - 7] {
        let mut bad = b.clone();
        bad[..8].copy_from_slice(&n.to_le_bytes());
        load_err(&bad);
    }
    // Shorter than the length field itself.
    for len in 0..8 {
        load_err(&b[..len]);
    }
}

#[test]
fn truncated_data() {
    let b = st(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &f32s(&[1.0, 2.0, 3.0, 4.0]));
    for cut in [1, 4, 15] {
        load_err(&b[..b.len() - cut]);
    }
    // Trailing bytes no tensor owns.
    let mut long = b.clone();
    long.push(0);
    load_err(&long);
}

#[test]
fn overlapping_and_out_of_range_offsets() {
    let data = f32s(&[1.0, 2.0, 3.0, 4.0]);
    for header in [
        // overlapping
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        // a gap
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
        // reversed
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
        // past the end
        r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}}"#,
        // offsets that disagree with shape x dtype
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
        r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#,
        // a shape whose element count overflows
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}}"#,
        // offsets that are not two numbers
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0]}}"#,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[-1,16]}}"#,
    ] {
        load_err(&st(header, &data));
    }
}

/// Offsets that each pass the crate's checks but add up to within 8 bytes of
/// `usize::MAX`: the crate's final `end + 8 + header` check overflowed (a panic with
/// overflow checks on). Refused before the crate sees it.
#[test]
fn offsets_summing_to_usize_max() {
    let each = (1u64 << 61) - 1; // U8 tensors: the largest size whose bit count fits in 64 bits
    let mut header = String::from("{");
    for i in 0..8u64 {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            r#""t{i}":{{"dtype":"U8","shape":[{each}],"data_offsets":[{},{}]}}"#,
            i * each,
            (i + 1) * each
        ));
    }
    header.push('}');
    let m = load_err(&st(&header, &[]));
    assert!(m.contains("past the end"), "{m}");
}

#[test]
fn unknown_and_unsupported_dtypes() {
    load_err(&st(r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]));
    let m = load_err(&st(r#"{"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]));
    assert!(m.contains("`a`") && m.contains("I32"), "{m}");
}

#[test]
fn header_not_json() {
    load_err(&st("not json at all", &[]));
    load_err(&st(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#, &[0; 4])); // cut short
    load_err(&st(r#"["a"]"#, &[]));
    load_err(&st(r#"{"a":{"dtype":"F32"}}"#, &[]));
    load_err(&st(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":1}}"#, &[0; 4]));
    let mut not_utf8 = st(r#"{"a":1}"#, &[]);
    not_utf8[9] = 0xff;
    load_err(&not_utf8);
}

/// Arbitrary bytes and every prefix of a good file: errors, no panics.
#[test]
fn prefixes_and_byte_flips() {
    let good = st(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[8,12]}}"#,
        &[0; 12],
    );
    assert!(File::parse(NAME, &good).is_ok());
    for len in 0..good.len() {
        load_err(&good[..len]);
    }
    let mut rng = common::Rng::new(7);
    for _ in 0..2000 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(b.len());
            b[i] = rng.next_u64() as u8;
        }
        if let Ok(f) = File::parse(NAME, &b) {
            for n in f.names() {
                let t = f.find(n).unwrap();
                let _ = t.to_f32(t.shape());
            }
        }
    }
}

// --- against a model's config ----------------------------------------------------------

const CONFIG: &str = include_str!("fixtures/llama/config.json");

fn fixture() -> Vec<u8> {
    std::fs::read("tests/fixtures/llama/model.safetensors").unwrap()
}

/// The fixture with `edit` applied to its tensors (name, shape, data).
fn rewrite(edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) -> Vec<u8> {
    let bytes = fixture();
    let f = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<(String, Vec<usize>, Vec<u8>)> =
        f.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut ts);
    let views: Vec<_> = ts
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn model_err(bytes: &[u8]) -> String {
    match model_from_hf_bytes(gpu(), CONFIG, &[(NAME, bytes)]) {
        Err(Error::Weights(m)) => m,
        Err(e) => panic!("expected Error::Weights, got {e:?}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn wrong_shape_for_the_config() {
    let b = rewrite(|ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1 = vec![47];
        t.2.truncate(47 * 4);
    });
    let m = model_err(&b);
    assert!(m.contains(NAME) && m.contains("model.norm.weight") && m.contains("[47]") && m.contains("[48]"), "{m}");

    // Same element count, other shape.
    let b =
        rewrite(|ts| ts.iter_mut().find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight").unwrap().1 = vec![48, 16]);
    let m = model_err(&b);
    assert!(m.contains("k_proj") && m.contains("[48, 16]") && m.contains("[16, 48]"), "{m}");
}

#[test]
fn missing_tensor() {
    let b = rewrite(|ts| ts.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight"));
    let m = model_err(&b);
    assert!(m.contains("model.layers.1.mlp.up_proj.weight") && m.contains("missing") && m.contains(NAME), "{m}");
    // The unmodified fixture loads.
    assert!(model_from_hf_bytes(gpu(), CONFIG, &[(NAME, &fixture())]).is_ok());
}

#[test]
fn bad_shard_index() {
    for (json, want) in [
        ("nope", "index.json"),
        (r#"{"metadata":{}}"#, "weight_map"),
        (r#"{"weight_map":{"a":1}}"#, "`a`"),
        (r#"{"weight_map":{}}"#, "empty"),
    ] {
        match shard_names("model.safetensors.index.json", json.as_bytes()) {
            Err(Error::Weights(m)) => assert!(m.contains("model.safetensors.index.json") && m.contains(want), "{m}"),
            other => panic!("{json}: {other:?}"),
        }
    }
    let names =
        shard_names("i.json", br#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"}}"#)
            .unwrap();
    assert_eq!(names, ["s1.safetensors", "s2.safetensors"]);
}
