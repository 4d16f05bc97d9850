//! The reader on synthetic files and on the file gguf-py wrote: metadata, header checks.

use webtune::export::gguf::put_string;
use webtune::load::gguf::{Array, Gguf, Value};
use webtune::Error;

use crate::{build, f32_tensor, fixtures, tensor};

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
    put_string(&mut b, "tokens");
    b.extend(8u32.to_le_bytes());
    b.extend(1000u64.to_le_bytes());
    b.extend(b"abc");
    expect_err("string value past the end", &b, &["string length 1000 of `tokens`", "past the end"]);

    let mut b = header(3, 0, 1);
    put_string(&mut b, "arr");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend((1u64 << 61).to_le_bytes());
    expect_err("array count 2^61", &b, &["array `arr` count 2305843009213693952 cannot fit"]);

    let mut b = header(3, 0, 1);
    put_string(&mut b, "arr");
    b.extend(9u32.to_le_bytes());
    b.extend(10u32.to_le_bytes()); // of u64
    b.extend(u64::MAX.to_le_bytes()); // count * 8 overflows
    expect_err("array count overflowing", &b, &["array `arr` count 18446744073709551615 cannot fit"]);

    let mut b = header(3, 0, 1);
    put_string(&mut b, "x");
    b.extend(13u32.to_le_bytes());
    b.extend([0u8; 8]);
    expect_err("unknown value type", &b, &["`x` has unknown value type 13"]);

    let mut b = header(3, 0, 1);
    put_string(&mut b, "x");
    b.extend(9u32.to_le_bytes());
    b.extend(77u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    expect_err("unknown array element type", &b, &["`x` has unknown element type 77"]);

    // Arrays nested deeper than the limit.
    let mut b = header(3, 0, 1);
    put_string(&mut b, "deep");
    b.extend(9u32.to_le_bytes());
    for _ in 0..20 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend([0u8; 64]);
    expect_err("deeply nested arrays", &b, &["nests arrays deeper than 8"]);

    let mut b = header(3, 0, 1);
    put_string(&mut b, "flag");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    expect_err("bool byte 2", &b, &["`flag` is a bool with byte value 2"]);

    let mut b = header(3, 0, 1);
    put_string(&mut b, "s");
    b.extend(8u32.to_le_bytes());
    put_string(&mut b, "\u{1}");
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
