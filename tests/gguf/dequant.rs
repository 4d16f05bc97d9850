//! Dequantization of every supported ggml type against gguf-py, bit for bit.

use webtune::load::gguf::{GgmlType, Gguf};

use crate::{fixtures, read_f32_safetensors};

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
