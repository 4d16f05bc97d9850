//! GGUF: the reader on synthetic files (every metadata type, versions 2 and 3, every kind of
//! bad input) and on a file gguf-py wrote; dequantization of every supported type against
//! gguf-py; the llama / qwen2 / gpt2 mapping on the tiny transformers fixtures converted to
//! GGUF the way llama.cpp's converter does; and the real default model (SmolLM2-135M Q4_1)
//! against transformers' own GGUF loading.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{block, check, gpu, Tol};
use webtune::load::gguf::{Array, GgmlType, Gguf, Value};
use webtune::load::gguf_model::{config_from_gguf, unpermute_rope_rows};
use webtune::load::{model_from_gguf_bytes, model_from_gguf_file};
use webtune::model::{Arch, Model};
use webtune::train::{batch, Example, LossMode, TrainConfig, Trainer};
use webtune::Error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---- a GGUF writer for synthetic files --------------------------------------------------

struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Forced offset (relative to the data section); None lays tensors out in order.
    offset: Option<u64>,
}

fn tensor(name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> TensorSpec {
    TensorSpec { name: name.into(), dims: dims.to_vec(), ty, data, offset: None }
}

fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> TensorSpec {
    tensor(name, dims, 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn array_type_id(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

fn put_array(b: &mut Vec<u8>, a: &Array) {
    b.extend(array_type_id(a).to_le_bytes());
    b.extend((a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => b.extend(v),
        Array::I8(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U16(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I16(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::F32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::F64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::Bool(v) => v.iter().for_each(|&x| b.push(x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(b, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(b, a)),
    }
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    b.extend(type_id(v).to_le_bytes());
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend(x.to_le_bytes()),
        Value::U16(x) => b.extend(x.to_le_bytes()),
        Value::I16(x) => b.extend(x.to_le_bytes()),
        Value::U32(x) => b.extend(x.to_le_bytes()),
        Value::I32(x) => b.extend(x.to_le_bytes()),
        Value::U64(x) => b.extend(x.to_le_bytes()),
        Value::I64(x) => b.extend(x.to_le_bytes()),
        Value::F32(x) => b.extend(x.to_le_bytes()),
        Value::F64(x) => b.extend(x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => put_str(b, s),
        Value::Array(a) => {
            // put_array writes its own element type after the value type.
            put_array(b, a)
        }
    }
}

/// A GGUF file: header, metadata, tensor infos, padding to `alignment`, data.
fn build(version: u32, alignment: u64, meta: &[(&str, Value)], tensors: &[TensorSpec]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        put_value(&mut b, v);
    }
    let mut at = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        let off = t.offset.unwrap_or(at.next_multiple_of(alignment));
        offsets.push(off);
        // Data at an absurd forced offset is not written (the info alone is the test).
        if off < 1 << 20 {
            at = at.max(off + t.data.len() as u64);
        }
        put_str(&mut b, &t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    let start = (b.len() as u64).next_multiple_of(alignment) as usize;
    b.resize(start, 0);
    let mut data = vec![0u8; at as usize];
    for (t, &off) in tensors.iter().zip(&offsets).filter(|(_, &o)| o < 1 << 20) {
        data[off as usize..off as usize + t.data.len()].copy_from_slice(&t.data);
    }
    b.extend(data);
    b
}

fn all_types_meta() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("test".into())),
        ("v.u8", Value::U8(250)),
        ("v.i8", Value::I8(-7)),
        ("v.u16", Value::U16(65535)),
        ("v.i16", Value::I16(-32768)),
        ("v.u32", Value::U32(u32::MAX)),
        ("v.i32", Value::I32(i32::MIN)),
        ("v.u64", Value::U64(u64::MAX)),
        ("v.i64", Value::I64(i64::MIN)),
        ("v.f32", Value::F32(-0.125)),
        ("v.f64", Value::F64(std::f64::consts::PI)),
        ("v.bool", Value::Bool(true)),
        ("v.bool2", Value::Bool(false)),
        ("v.str", Value::String("Grüße, 世界".into())),
        ("v.empty_str", Value::String(String::new())),
        ("a.u8", Value::Array(Array::U8(vec![1, 2, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-2]))),
        ("a.u32", Value::Array(Array::U32(vec![7, 8, 9]))),
        ("a.i32", Value::Array(Array::I32(vec![-1, 0, 1]))),
        ("a.u64", Value::Array(Array::U64(vec![1 << 40]))),
        ("a.i64", Value::Array(Array::I64(vec![-(1 << 40)]))),
        ("a.f32", Value::Array(Array::F32(vec![1.5, -2.25]))),
        ("a.f64", Value::Array(Array::F64(vec![1e-300]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        ("a.str", Value::Array(Array::String(vec!["x".into(), "".into(), "ÿ".into()]))),
        ("a.empty", Value::Array(Array::I32(vec![]))),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::String(vec!["deep".into()]),
                Array::Array(vec![Array::F32(vec![0.5]), Array::Array(vec![])]),
            ])),
        ),
    ]
}

// ---- the reader on synthetic files -----------------------------------------------------

#[test]
fn parses_every_metadata_type_in_versions_2_and_3() {
    let meta = all_types_meta();
    for version in [2u32, 3] {
        for alignment in [32u64, 64] {
            let mut m = meta.clone();
            if alignment != 32 {
                m.push(("general.alignment", Value::U32(alignment as u32)));
            }
            let ts = vec![
                f32_tensor("a", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                tensor(
                    "b",
                    &[4],
                    1,
                    [1.0f32, -2.0, 0.5, 65504.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                ),
                tensor(
                    "c",
                    &[2],
                    30,
                    [1.5f32, -3.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
                ),
                f32_tensor("scalar", &[], &[42.0]),
            ];
            let bytes = build(version, alignment, &m, &ts);
            let g = Gguf::parse("synthetic.gguf", &bytes).unwrap();
            assert_eq!(g.version, version);
            assert_eq!(g.alignment, alignment);
            assert_eq!(g.data_start % alignment as usize, 0);
            for (k, v) in &m {
                assert_eq!(g.get(k), Some(v), "v{version}: metadata `{k}`");
            }
            assert_eq!(g.metadata.len(), m.len());
            assert_eq!(
                g.metadata.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                m.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                "file order"
            );
            let a = g.tensor("a").unwrap();
            assert_eq!(a.dims, vec![3, 2]);
            assert_eq!(a.shape(), vec![2, 3]);
            assert_eq!(a.offset % alignment, 0);
            assert_eq!(g.dequantize(a).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            assert_eq!(g.dequantize(g.tensor("b").unwrap()).unwrap(), vec![1.0, -2.0, 0.5, 65504.0]);
            assert_eq!(g.dequantize(g.tensor("c").unwrap()).unwrap(), vec![1.5, -3.0]);
            let s = g.tensor("scalar").unwrap();
            assert_eq!((s.n_values, g.dequantize(s).unwrap()), (1, vec![42.0]));
            assert!(g.tensor("missing").is_none());
        }
    }
    // Accessors.
    let bytes = build(3, 32, &meta, &[]);
    let g = Gguf::parse("synthetic.gguf", &bytes).unwrap();
    assert_eq!(g.get("v.u8").unwrap().as_u64(), Some(250));
    assert_eq!(g.get("v.i8").unwrap().as_u64(), None);
    assert_eq!(g.get("v.i8").unwrap().as_f64(), Some(-7.0));
    assert_eq!(g.get("v.bool").unwrap().as_bool(), Some(true));
    assert_eq!(g.get("a.u16").unwrap().as_array().unwrap().to_i64s(), Some(vec![1, 65535]));
    assert_eq!(g.get("a.str").unwrap().as_array().unwrap().as_strings().unwrap()[2], "ÿ");
    assert_eq!(g.tensors.len(), 0);
}

/// The error of parsing `bytes`, which must be a `Weights` error naming the file.
fn parse_err(bytes: &[u8]) -> String {
    match Gguf::parse("bad.gguf", bytes) {
        Ok(_) => panic!("parsed a bad file"),
        Err(Error::Weights(m)) => {
            assert!(m.starts_with("bad.gguf: "), "error does not name the file: {m}");
            m
        }
        Err(e) => panic!("wrong error kind: {e:?}"),
    }
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

fn expect_err(what: &str, bytes: &[u8], needles: &[&str]) {
    let m = parse_err(bytes);
    for n in needles {
        assert!(m.contains(n), "{what}: error `{m}` lacks `{n}`");
    }
    eprintln!("{what}: {m}");
}

#[test]
fn refuses_bad_files_with_named_errors() {
    let ok = build(3, 32, &[("k", Value::U32(1))], &[f32_tensor("t", &[4], &[1.0; 4])]);
    Gguf::parse("ok.gguf", &ok).unwrap();

    let mut b = ok.clone();
    b[0..4].copy_from_slice(b"GGML");
    expect_err("bad magic", &b, &["bad magic", "not a GGUF file"]);
    expect_err("empty file", &[], &["truncated", "magic"]);

    let mut b = ok.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    expect_err("version 1", &b, &["version 1 is not supported"]);
    let mut b = ok.clone();
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    expect_err("version 4", &b, &["version 4 is not supported"]);
    let mut b = ok.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    expect_err("big-endian", &b, &["big-endian"]);

    expect_err("tensor count 2^60", &header(3, 1 << 60, 0), &["tensor count 1152921504606846976 cannot fit"]);
    expect_err("metadata count 2^60", &header(2, 0, 1 << 60), &["metadata count 1152921504606846976 cannot fit"]);
    expect_err("metadata count u64::MAX", &header(3, 0, u64::MAX), &["metadata count", "cannot fit"]);

    let mut b = header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 16]);
    expect_err(
        "key length past the end",
        &b,
        &["string length 18446744073709551615", "key of metadata entry 0", "past the end"],
    );

    let mut b = header(3, 0, 1);
    put_str(&mut b, "tokens");
    b.extend(8u32.to_le_bytes());
    b.extend(1000u64.to_le_bytes());
    b.extend(b"abc");
    expect_err("string value past the end", &b, &["string length 1000 of `tokens`", "past the end"]);

    let mut b = header(3, 0, 1);
    put_str(&mut b, "arr");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend((1u64 << 61).to_le_bytes());
    expect_err("array count 2^61", &b, &["array `arr` count 2305843009213693952 cannot fit"]);

    let mut b = header(3, 0, 1);
    put_str(&mut b, "arr");
    b.extend(9u32.to_le_bytes());
    b.extend(10u32.to_le_bytes()); // of u64
    b.extend(u64::MAX.to_le_bytes()); // count * 8 overflows
    expect_err("array count overflowing", &b, &["array `arr` count 18446744073709551615 cannot fit"]);

    let mut b = header(3, 0, 1);
    put_str(&mut b, "x");
    b.extend(13u32.to_le_bytes());
    b.extend([0u8; 8]);
    expect_err("unknown value type", &b, &["`x` has unknown value type 13"]);

    let mut b = header(3, 0, 1);
    put_str(&mut b, "x");
    b.extend(9u32.to_le_bytes());
    b.extend(77u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    expect_err("unknown array element type", &b, &["`x` has unknown element type 77"]);

    // Arrays nested deeper than the limit.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "deep");
    b.extend(9u32.to_le_bytes());
    for _ in 0..20 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend([0u8; 64]);
    expect_err("deeply nested arrays", &b, &["nests arrays deeper than 8"]);

    let mut b = header(3, 0, 1);
    put_str(&mut b, "flag");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    expect_err("bool byte 2", &b, &["`flag` is a bool with byte value 2"]);

    let mut b = header(3, 0, 1);
    put_str(&mut b, "s");
    b.extend(8u32.to_le_bytes());
    put_str(&mut b, "\u{1}");
    let n = b.len();
    b[n - 1] = 0xFF;
    expect_err("invalid UTF-8", &b, &["`s` is not valid UTF-8"]);

    let dup = build(3, 32, &[("k", Value::U8(1)), ("k", Value::U8(2))], &[]);
    expect_err("duplicate key", &dup, &["duplicate metadata key `k`"]);

    for (a, v) in [("3", Value::U32(3)), ("0", Value::U32(0)), ("u64", Value::U64(32))] {
        let b = build(3, 32, &[("general.alignment", v)], &[]);
        expect_err(&format!("alignment {a}"), &b, &["`general.alignment` must be a uint32 power of two"]);
    }

    let b = build(3, 32, &[], &[f32_tensor("t5", &[1, 1, 1, 1, 1], &[1.0])]);
    expect_err("5 dims", &b, &["tensor `t5` has 5 dimensions (at most 4)"]);

    let b = build(3, 32, &[], &[tensor("odd", &[4], 99, vec![0; 16])]);
    expect_err("unknown tensor type", &b, &["tensor `odd` has unknown ggml type 99"]);

    let b = build(3, 32, &[], &[tensor("q", &[48], 8, vec![0; 34 * 2])]);
    expect_err(
        "row not a block multiple",
        &b,
        &["tensor `q` (Q8_0) has 48 values per row, not a multiple of its block size 32"],
    );

    let b = build(3, 32, &[], &[f32_tensor("huge", &[u64::MAX, 2], &[1.0])]);
    expect_err("dims overflowing", &b, &["tensor `huge` has dimensions", "too many values"]);

    let mut ts = vec![f32_tensor("t", &[4], &[1.0; 4])];
    ts[0].offset = Some(4);
    expect_err(
        "misaligned offset",
        &build(3, 32, &[], &ts),
        &["tensor `t` data offset 4 is not a multiple of the alignment 32"],
    );

    let mut b = ok.clone();
    b.truncate(b.len() - 1);
    expect_err(
        "data truncated",
        &b,
        &["tensor `t` data out of range: 16 bytes (F32 [4]) at offset 0 of a 15-byte data section"],
    );

    let mut ts = vec![f32_tensor("far", &[4], &[1.0; 4])];
    ts[0].offset = Some(u64::MAX - 31); // a multiple of 32; offset + size overflows u64
                                        // The tensor declares 16 bytes of data at an offset near 2^64.
    expect_err("offset near 2^64", &build(3, 32, &[], &ts), &["tensor `far` data out of range"]);

    let mut ts = vec![f32_tensor("a", &[16], &[1.0; 16]), f32_tensor("b", &[4], &[2.0; 4])];
    ts[1].offset = Some(32);
    expect_err(
        "overlapping tensors",
        &build(3, 32, &[], &ts),
        &["tensors `a` (bytes 0..64) and `b` (from 32) overlap"],
    );

    let ts = vec![f32_tensor("a", &[4], &[1.0; 4]), f32_tensor("a", &[4], &[1.0; 4])];
    expect_err("duplicate tensor", &build(3, 32, &[], &ts), &["duplicate tensor name `a`"]);

    // Unsupported but known types parse; decoding them is refused by name.
    let b = build(3, 32, &[], &[tensor("q2", &[256], 10, vec![0; 84])]);
    let g = Gguf::parse("q2.gguf", &b).unwrap();
    match g.dequantize(g.tensor("q2").unwrap()) {
        Err(Error::Weights(m)) => {
            assert!(m.contains("q2.gguf: tensor `q2` has type Q2_K (ggml type 10), which is not supported"), "{m}");
            eprintln!("unsupported type: {m}");
        }
        other => panic!("Q2_K decoded: {other:?}"),
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes =
        build(2, 32, &all_types_meta(), &[f32_tensor("a", &[8], &[1.0; 8]), tensor("q", &[32], 8, vec![1; 34])]);
    Gguf::parse("full.gguf", &bytes).unwrap();
    for n in 0..bytes.len() {
        match Gguf::parse("cut.gguf", &bytes[..n]) {
            Err(Error::Weights(_)) => {}
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
    // And single-byte corruptions of the header region never panic.
    let infos_end = Gguf::parse("full.gguf", &bytes).unwrap().data_start;
    for i in 0..infos_end {
        for x in [0x00u8, 0xFF, 0x80] {
            let mut b = bytes.clone();
            b[i] = x;
            let _ = Gguf::parse("flip.gguf", &b);
        }
    }
}

// ---- gguf-py's file and dequantization ---------------------------------------------------

fn read_f32_safetensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32);
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let dir = fixtures().join("quants");
    let bytes = std::fs::read(dir.join("quants.gguf")).unwrap();
    let g = Gguf::parse("quants.gguf", &bytes).unwrap();
    let expected = read_f32_safetensors(&dir.join("expected.safetensors"));
    let types = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"];
    assert_eq!(expected.len(), types.len());
    for name in types {
        let t = g.tensor(name).unwrap_or_else(|| panic!("fixture lacks {name}"));
        assert_eq!(t.ty, GgmlType::by_name(name).unwrap());
        assert_eq!(t.dims, vec![512, 8]);
        let (shape, want) = &expected[name];
        assert_eq!(shape, &vec![8, 512]);
        let got = g.dequantize(t).unwrap();
        assert_eq!(got.len(), want.len());
        let mismatches: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(
            mismatches.is_empty(),
            "{name}: {} values differ from gguf-py (first [{}]: {} vs {}), worst |diff| {worst:e}",
            mismatches.len(),
            mismatches[0],
            got[mismatches[0]],
            want[mismatches[0]]
        );
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!(
            "{name}: {} values ({} bytes) bit-identical to gguf-py, max |value| {scale:.3e}",
            got.len(),
            t.n_bytes
        );
    }
}

#[test]
fn gguf_py_file_metadata() {
    let bytes = std::fs::read(fixtures().join("quants/quants.gguf")).unwrap();
    let g = Gguf::parse("quants.gguf", &bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.get("general.architecture").and_then(Value::as_str), Some("test"));
    let want = [
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4000000000)),
        ("test.i32", Value::I32(-2000000000)),
        ("test.u64", Value::U64((1 << 63) + 5)),
        ("test.i64", Value::I64(-(1 << 62))),
        ("test.f32", Value::F32(0.25)),
        ("test.f64", Value::F64(-1.5e300)),
        ("test.bool", Value::Bool(true)),
        ("test.string", Value::String("héllo ☃".into())),
        ("test.array.i32", Value::Array(Array::I32(vec![1, -2, 3]))),
        ("test.array.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        ("test.array.string", Value::Array(Array::String(vec!["a".into(), "".into(), "ü".into()]))),
        (
            "test.array.nested",
            Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3]), Array::I32(vec![4, 5, 6])])),
        ),
    ];
    for (k, v) in &want {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
}

// ---- mapping: the tiny transformers fixtures as GGUF ---------------------------------

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

/// Logits (len, V) of every position of `ids`.
fn all_logits(t: &mut Trainer, ids: &[u32]) -> Vec<f32> {
    let e = Example::prompt_answer(ids.to_vec(), 1, "logits");
    let mut mb = batch::plan(std::slice::from_ref(&e), LossMode::AllTokens, 1).unwrap().remove(0);
    mb.loss_rows = (0..ids.len() as u32).collect();
    mb.targets = vec![0; ids.len()];
    mb.weights = vec![0.0; ids.len()];
    block(t.logits(&mb)).unwrap()
}

/// The same tolerance as tests/model/parity.rs: the engine in f32 against float64 truth.
const TINY_LOGITS: Tol = Tol { name: "TINY_LOGITS", abs: 1e-6, rel: 1e-5 };

#[test]
fn tiny_fixtures_as_gguf_match_transformers() {
    let g = gpu();
    for arch in ["llama", "qwen2", "gpt2"] {
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
}

// ---- the real model ----------------------------------------------------------------------

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model from models/ (scripts/fetch-model.sh), or None with a notice; in CI
/// (`CI` set) a missing file fails the test instead.
fn smollm2_path() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(SMOLLM2);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing and CI is set: run scripts/fetch-model.sh", p.display());
    }
    eprintln!("SKIPPED: {} is missing (run scripts/fetch-model.sh)", p.display());
    None
}

/// Logits of a 30-layer model in f32 against float64 truth on the same (dequantized)
/// weights: relative to the largest logit, the f32 engine stays near 1e-6 (HF's own f32
/// path: 1.5e-6); 2e-5 leaves room for round-off yet a wrong RoPE permutation or a
/// dequantization slip moves logits by >1e-2.
const SMOL_LOGITS: Tol = Tol { name: "SMOL_LOGITS", abs: 1e-5, rel: 2e-5 };
/// Scalar losses of order 1-5 computed in f32 over 30 layers.
const SMOL_LOSS: f64 = 2e-5;

#[test]
fn smollm2_q4_1_matches_transformers() {
    let Some(path) = smollm2_path() else { return };
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2/fixture.json")).unwrap()).unwrap();
    assert_eq!(fx["gguf"]["bytes"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len(), "a different GGUF file");
    let g = gpu();
    let t0 = std::time::Instant::now();
    let (model, info) = model_from_gguf_file(g, &path).unwrap();
    eprintln!("loaded {SMOLLM2} in {:.1}s: {:?}", t0.elapsed().as_secs_f64(), info.tensor_types);
    check_smollm2_info(&model, &info);

    let expected = read_f32_safetensors(&fixtures().join("smollm2/expected.safetensors"));
    let (shape, want) = &expected["logits"];
    let v = model.cfg.vocab;
    let mut t = Trainer::new(g, model, TrainConfig::default()).unwrap();
    let prompts: Vec<Vec<u32>> = fx["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect();
    let rows = fx["logit_rows"].as_array().unwrap();
    assert_eq!(shape, &vec![rows.len(), v]);
    let logits: Vec<Vec<f32>> = prompts.iter().map(|ids| all_logits(&mut t, ids)).collect();
    for (r, row) in rows.iter().enumerate() {
        let (p, pos) = (row[0].as_u64().unwrap() as usize, row[1].as_u64().unwrap() as usize);
        let got = &logits[p][pos * v..(pos + 1) * v];
        let want: Vec<f64> = want[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
        let worst = check(&format!("SmolLM2 logits of prompt {p} position {pos}"), got, &want, SMOL_LOGITS);
        let argmax =
            |x: &[f32]| x.iter().enumerate().fold((0, f32::MIN), |m, (i, &y)| if y > m.1 { (i, y) } else { m }).0;
        let want32: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        assert_eq!(argmax(got), argmax(&want32), "prompt {p} position {pos}: top token");
        eprintln!(
            "SmolLM2 prompt {p} position {pos}: worst logit error {worst:.2e} of the largest, top token {}",
            argmax(got)
        );
    }

    let examples: Vec<Example> = fx["examples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let ids = e["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            Example::prompt_answer(ids, e["prompt_len"].as_u64().unwrap() as usize, format!("smollm2 example {i}"))
        })
        .collect();
    for mode in [LossMode::PerExample, LossMode::PerToken, LossMode::AllTokens] {
        let (scores, loss) = block(t.score(&examples, mode)).unwrap();
        let want = fx["losses"][mode.to_string()].as_f64().unwrap();
        let err = (loss - want).abs() / want.abs().max(1.0);
        eprintln!("SmolLM2 {mode}: loss {loss:.7} vs transformers {want:.7} (relative error {err:.2e})");
        assert!(err <= SMOL_LOSS, "SmolLM2 {mode}: loss {loss} vs transformers {want} (> {SMOL_LOSS})");
        if mode == LossMode::AllTokens {
            for (i, s) in scores.iter().enumerate() {
                let nll: Vec<f64> = fx["nll"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                let mean = nll.iter().sum::<f64>() / nll.len() as f64;
                assert!(
                    (s.mean_nll - mean).abs() <= SMOL_LOSS * mean.max(1.0),
                    "example {i}: {} vs {mean}",
                    s.mean_nll
                );
            }
        }
    }
}

fn check_smollm2_info(model: &Model, info: &webtune::load::GgufInfo) {
    let c = &model.cfg;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.ffn, c.max_pos),
        (49152, 576, 30, 9, 3, 64, 1536, 8192)
    );
    assert!(c.tied && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.inv_freq, webtune::ops::rope::default_inv_freq(100000.0, 64));
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
    assert_eq!(info.version, 3);
    assert_eq!(info.architecture, "llama");
    let tk = &info.tokenizer;
    assert_eq!(tk.model, "gpt2");
    assert_eq!(tk.pre.as_deref(), Some("smollm"));
    assert_eq!((tk.tokens.len(), tk.token_types.len(), tk.merges.len()), (49152, 49152, 48900));
    assert!(tk.scores.is_empty());
    assert_eq!(tk.tokens[1], "<|im_start|>");
    assert_eq!(tk.tokens[2], "<|im_end|>");
    assert_eq!((tk.bos_id, tk.eos_id, tk.pad_id, tk.unk_id), (Some(1), Some(2), Some(2), Some(0)));
    assert_eq!(tk.add_bos, Some(false));
    assert!(tk.merges[0].contains(' '), "merges are `left right`: {}", tk.merges[0]);
    assert!(info.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(info.tensor_types, vec![("Q8_0".into(), 1), ("F32".into(), 61), ("Q4_1".into(), 210)]);
}
