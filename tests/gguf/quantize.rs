//! The quantizers behind `--base` (src/load/quantize.rs): F16, BF16, Q8_0 and Q4_0 byte
//! for byte against gguf-py (tests/fixtures/quants/quantize.safetensors, made by
//! make_quant_fixtures.py); Q4_K, for which gguf-py has no quantizer and so no byte
//! fixture exists, by its round-trip error and by consistency with the dequantizer.

use webtune::load::compact::{dequantize_gguf, CompactFormat, CompactTensor};
use webtune::load::quantize::{q4_0, q4_k, quantize};

use crate::common::Rng;
use crate::fixtures;

#[test]
fn quantizers_give_gguf_py_bytes() {
    let bytes = std::fs::read(fixtures().join("quants/quantize.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let src = st.tensor("source").unwrap();
    let (rows, cols) = (src.shape()[0], src.shape()[1]);
    let x: Vec<f32> = src.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    for name in ["F16", "BF16", "Q8_0", "Q4_0"] {
        let f = CompactFormat::from_name(name).unwrap();
        let want = st.tensor(name).unwrap();
        assert_eq!(want.dtype(), safetensors::Dtype::U8);
        let got = quantize(f, &x).unwrap();
        let want = want.data();
        assert_eq!(got.len(), want.len(), "{name}: byte count");
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "{name}: {} of {} bytes differ from gguf-py (first at byte {}: {:#04x} vs {:#04x}, block {})",
            bad.len(),
            got.len(),
            bad[0],
            got[bad[0]],
            want[bad[0]],
            bad[0] / f.gguf_block_bytes().max(1)
        );
        // The compact tensor made from them holds the same bytes.
        let t = CompactTensor::quantize("source", f, rows, cols, &x).unwrap();
        assert_eq!(t.to_gguf(), got, "{name}");
        eprintln!("{name}: {} bytes identical to gguf-py", got.len());
    }
}

fn rms(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x * x, n + 1));
    (s / n as f64).sqrt()
}

/// Q4_K round trip on Gaussian rows of several scales: per super-block relative RMS error
/// below Q4K_REL_RMS, every element within Q4K_MAX_STEPS quantization steps of its
/// sub-block, and better than Q4_0 on the same data (what the 6-bit sub-block scales and
/// mins are for).
#[test]
fn q4_k_round_trip_error_is_bounded() {
    // A 4-bit uniform quantizer over a Gaussian block's range has an RMS error near
    // range / 15 / sqrt(12), about 8% of the standard deviation for 32 values; the
    // fitted scales and mins land near that (worst super-block measured 8.0% here).
    const Q4K_REL_RMS: f64 = 0.09;
    // An element is at most half a step from its level when its sub-block's range is
    // covered; the 6-bit quantization of scale and min (and the min clamped to <= 0) can
    // push a few past that (worst measured here 0.67 steps; the bound leaves room for
    // clipped outliers).
    const Q4K_MAX_STEPS: f64 = 1.5;
    let mut rng = Rng::new(7);
    let (mut worst_rel, mut worst_steps) = (0f64, 0f64);
    let (mut e4k, mut e40) = (0f64, 0f64);
    for scale in [1e-3, 1.0, 30.0] {
        let x: Vec<f32> = rng.vec(8 * 256, scale);
        let q = q4_k(&x);
        assert_eq!(q.len(), 8 * 144);
        let y = dequantize_gguf(CompactFormat::Q4_K, &q);
        let y0 = dequantize_gguf(CompactFormat::Q4_0, &q4_0(&x));
        for (sb, (xs, ys)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
            let sd = rms(xs.iter().map(|&v| v as f64));
            let r = rms(xs.iter().zip(ys).map(|(&a, &b)| a as f64 - b as f64)) / sd;
            worst_rel = worst_rel.max(r);
            assert!(r < Q4K_REL_RMS, "scale {scale} super-block {sb}: relative RMS error {r:.4}");
            for (j, (xj, yj)) in xs.chunks(32).zip(ys.chunks(32)).enumerate() {
                let (lo, hi) = xj.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                let step = (hi - lo) as f64 / 15.0;
                for (a, b) in xj.iter().zip(yj) {
                    let s = (*a as f64 - *b as f64).abs() / step;
                    worst_steps = worst_steps.max(s);
                    assert!(
                        s <= Q4K_MAX_STEPS,
                        "scale {scale} super-block {sb} sub-block {j}: {a} -> {b}, {s:.2} steps"
                    );
                }
            }
        }
        e4k += rms(x.iter().zip(&y).map(|(&a, &b)| (a - b) as f64)) / scale;
        e40 += rms(x.iter().zip(&y0).map(|(&a, &b)| (a - b) as f64)) / scale;
    }
    eprintln!("Q4_K: worst relative RMS {worst_rel:.4}, worst {worst_steps:.2} steps; summed RMS Q4_K {e4k:.4} vs Q4_0 {e40:.4}");
    assert!(e4k < e40, "Q4_K ({e4k}) should beat Q4_0 ({e40})");
}

/// Q4_K's special blocks, and its bytes through the compact layout: all zeros give zero
/// bytes; a constant positive block comes back within one step of its value; requantizing
/// the dequantized values changes no value by more than a step; and the CompactTensor of
/// the bytes dequantizes to the host's values.
#[test]
fn q4_k_special_blocks_and_consistency() {
    let zeros = q4_k(&[0.0; 256]);
    assert!(zeros.iter().all(|&b| b == 0), "all-zero block");
    let c = dequantize_gguf(CompactFormat::Q4_K, &q4_k(&[0.75; 256]));
    assert!(c.iter().all(|&v| (v - 0.75).abs() <= 0.75 / 15.0 + 1e-6), "constant block: {:?}", &c[..4]);
    let mut rng = Rng::new(8);
    let x = rng.vec(2 * 512, 1.0);
    let y = dequantize_gguf(CompactFormat::Q4_K, &q4_k(&x));
    let y2 = dequantize_gguf(CompactFormat::Q4_K, &q4_k(&y));
    let step =
        |v: &[f32]| (v.iter().fold(f32::MIN, |m, &a| m.max(a)) - v.iter().fold(f32::MAX, |m, &a| m.min(a))) / 15.0;
    for (sb, (a, b)) in y.chunks(32).zip(y2.chunks(32)).enumerate() {
        let s = step(a);
        assert!(
            a.iter().zip(b).all(|(p, q)| (p - q).abs() <= s * 1.01),
            "sub-block {sb}: requantizing moved a value by more than a step"
        );
    }
    let t = CompactTensor::quantize("w", CompactFormat::Q4_K, 2, 512, &x).unwrap();
    assert_eq!(t.dequantize(), y);
    // Shapes Q4_K cannot hold are refused by name.
    let e = CompactTensor::quantize("blk.0.attn_q.weight", CompactFormat::Q4_K, 4, 96, &[0.0; 384]).unwrap_err();
    assert!(e.to_string().contains("blk.0.attn_q.weight"), "{e}");
    // A format without a quantizer is a typed error too.
    assert!(CompactTensor::quantize("w", CompactFormat::Q6_K, 1, 256, &[0.0; 256]).is_err());
}
