//! The in-kernel dequantizers (shaders/quant.wgsl's `wq_get` and `wq_get4`, through
//! shaders/dequant.wgsl) against the host dequantizer (src/load/dequant.rs, itself
//! bit-identical to gguf-py): every format, random blocks, awkward shapes, whole tensors
//! and gathered rows. The comparison is bit for bit: no tolerance, because every product
//! in a dequantizer is exact in f32 and each value has at most one rounding (see
//! quant.wgsl), so any difference is a bug.

use webtune::gpu::Encoder;
use webtune::load::compact::{dequantize_gguf, CompactFormat, CompactTensor};
use webtune::load::gguf::Gguf;
use webtune::ops::dequant::{dequant_rows, CompactWeight};

use crate::common::{block, gpu, Rng};

/// Byte offsets of the f16 scales inside a GGUF block (d, and m / dmin where there is one).
fn scale_offsets(f: CompactFormat) -> &'static [usize] {
    use CompactFormat::*;
    match f {
        Q8_0 | Q4_0 | Q5_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q6_K => &[208],
        F32 | F16 | BF16 => &[],
    }
}

/// A random finite half: every sign, zero, subnormals (exponent 0) and normals up to 2^6.
fn random_half(rng: &mut Rng) -> u16 {
    let e = rng.below(22) as u16;
    let m = rng.below(1024) as u16;
    let s = (rng.below(2) as u16) << 15;
    if rng.below(20) == 0 {
        return s;
    }
    s | e << 10 | m
}

/// Random GGUF bytes of a (rows, cols) tensor of `f`: random quants, finite random scales;
/// for the float formats random finite bit patterns (subnormals included).
pub fn random_gguf(rng: &mut Rng, f: CompactFormat, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    match f {
        CompactFormat::F32 => (0..n)
            .flat_map(|_| {
                let mut b = rng.next_u64() as u32;
                if (b >> 23) & 0xFF == 0xFF {
                    b &= !(1 << 30);
                }
                b.to_le_bytes()
            })
            .collect(),
        CompactFormat::F16 => (0..n).flat_map(|_| random_half(rng).to_le_bytes()).collect(),
        CompactFormat::BF16 => (0..n)
            .flat_map(|_| {
                let mut b = rng.next_u64() as u16;
                if (b >> 7) & 0xFF == 0xFF {
                    b &= !(1 << 14);
                }
                b.to_le_bytes()
            })
            .collect(),
        _ => {
            let bb = f.gguf_block_bytes();
            let blocks = n / f.block_values();
            let mut bytes: Vec<u8> = (0..blocks * bb).map(|_| rng.below(256) as u8).collect();
            for b in bytes.chunks_exact_mut(bb) {
                for &o in scale_offsets(f) {
                    b[o..o + 2].copy_from_slice(&random_half(rng).to_le_bytes());
                }
            }
            bytes
        }
    }
}

/// Awkward shapes per format: row counts 1, 3, 7, 33; rows of 1, 3 (an odd count, so the
/// front scale words are padded) and more blocks; odd and non-multiple-of-4 float rows.
fn shapes(f: CompactFormat) -> Vec<(usize, usize)> {
    let qk = f.block_values();
    let cols: Vec<usize> = if qk == 1 {
        vec![1, 5, 6, 12, 130]
    } else if qk == 32 {
        vec![32, 96, 544]
    } else {
        vec![256, 768]
    };
    let mut v = Vec::new();
    for &c in &cols {
        for r in [1, 3, 7, 33] {
            v.push((r, c));
        }
    }
    v
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ from the host dequantizer (first [{}]: {:e} = {:#010x} vs {:e} = {:#010x})",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        got[bad[0]].to_bits(),
        want[bad[0]],
        want[bad[0]].to_bits()
    );
}

/// Expand `t` on the GPU: whole (scalar and 4-wide) and gathered by `ids`.
fn gpu_expand(t: &CompactTensor, ids: &[u32]) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
    let g = gpu();
    let w = CompactWeight::upload(g, "wq", t).unwrap();
    assert_eq!(w.gpu_bytes(), t.gpu_bytes());
    let (rows, cols) = (t.rows, t.cols);
    let out1 = g.zeros("out1", rows * cols).unwrap();
    let out4 = g.zeros("out4", rows * cols).unwrap();
    let outg = g.zeros("outg", ids.len() * cols).unwrap();
    let tids = g.upload_u32("ids", ids).unwrap();
    let mut enc = Encoder::new(g);
    dequant_rows(&mut enc, &w, None, &out1, rows, false).unwrap();
    let vec4 = cols % 4 == 0;
    if vec4 {
        dequant_rows(&mut enc, &w, None, &out4, rows, true).unwrap();
    } else {
        assert!(dequant_rows(&mut enc, &w, None, &out4, rows, true).is_err());
    }
    dequant_rows(&mut enc, &w, Some(&tids), &outg, ids.len(), vec4).unwrap();
    enc.submit();
    let r1 = block(g.read_f32(&out1)).unwrap();
    let r4 = vec4.then(|| block(g.read_f32(&out4)).unwrap());
    let rg = block(g.read_f32(&outg)).unwrap();
    (r1, r4, rg)
}

#[test]
fn dequant_matches_host_bit_for_bit_every_format() {
    let mut rng = Rng::new(91);
    for &f in CompactFormat::ALL {
        for (rows, cols) in shapes(f) {
            let bytes = random_gguf(&mut rng, f, rows, cols);
            let want = dequantize_gguf(f, &bytes);
            assert_eq!(want.len(), rows * cols);
            let t = CompactTensor::from_gguf("w", f, rows, cols, &bytes).unwrap();
            // More ids than rows, repeats, and the last row.
            let mut ids: Vec<u32> = (0..rows + 5).map(|_| rng.below(rows) as u32).collect();
            ids.push(rows as u32 - 1);
            let (whole, whole4, gathered) = gpu_expand(&t, &ids);
            let what = format!("{} {rows}x{cols}", f.name());
            assert_bits(&format!("{what} wq_get"), &whole, &want);
            if let Some(w4) = whole4 {
                assert_bits(&format!("{what} wq_get4"), &w4, &want);
            }
            let want_g: Vec<f32> =
                ids.iter().flat_map(|&r| want[r as usize * cols..(r as usize + 1) * cols].to_vec()).collect();
            assert_bits(&format!("{what} gathered"), &gathered, &want_g);
        }
        eprintln!("{}: GPU dequantization bit-identical on {} shapes", f.name(), shapes(f).len());
    }
}

/// The tensors gguf-py wrote (tests/fixtures/quants, one per format, 8 x 512, Q8_0..Q5_1
/// quantized by gguf-py itself), expanded on the GPU, against gguf-py's own dequantization.
#[test]
fn dequant_of_gguf_py_file_matches_gguf_py() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants");
    let bytes = std::fs::read(dir.join("quants.gguf")).unwrap();
    let g = Gguf::parse("quants.gguf", &bytes).unwrap();
    let exp = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&exp).unwrap();
    for &f in CompactFormat::ALL {
        let info = g.tensor(f.name()).unwrap();
        let t = CompactTensor::from_gguf_tensor(info, g.tensor_bytes(info)).unwrap();
        assert_eq!((t.format, t.rows, t.cols), (f, 8, 512));
        let want: Vec<f32> = st
            .tensor(f.name())
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (whole, whole4, _) = gpu_expand(&t, &[0]);
        assert_bits(&format!("{} gguf-py file, wq_get", f.name()), &whole, &want);
        assert_bits(&format!("{} gguf-py file, wq_get4", f.name()), &whole4.unwrap(), &want);
    }
}

#[test]
fn dequant_rows_refuses_bad_arguments() {
    let g = gpu();
    let t = CompactTensor::from_gguf("w", CompactFormat::Q8_0, 2, 32, &[0u8; 68]).unwrap();
    let w = CompactWeight::upload(g, "wq", &t).unwrap();
    let small = g.zeros("small", 10).unwrap();
    let big = g.zeros("big", 200).unwrap();
    let ids = g.upload_u32("ids", &[0, 1]).unwrap();
    let mut enc = Encoder::new(g);
    assert!(dequant_rows(&mut enc, &w, None, &small, 2, false).is_err(), "output too small");
    assert!(dequant_rows(&mut enc, &w, None, &big, 3, false).is_err(), "more rows than the tensor without ids");
    assert!(dequant_rows(&mut enc, &w, Some(&ids), &big, 3, false).is_err(), "fewer ids than rows");
    let bad = CompactWeight { cols: 33, ..w.clone() };
    assert!(dequant_rows(&mut enc, &bad, None, &big, 1, false).is_err(), "cols not whole blocks");
    let t = CompactTensor::from_gguf("w", CompactFormat::F16, 1, 6, &[0u8; 12]).unwrap();
    let w = CompactWeight::upload(g, "wq", &t).unwrap();
    assert!(dequant_rows(&mut enc, &w, None, &big, 1, true).is_err(), "4-wide with cols % 4 != 0");
    // Shapes a format cannot hold are refused by name when the tensor is made.
    let e = CompactTensor::from_gguf("blk.3.ffn_down.weight", CompactFormat::Q4_K, 2, 128, &[0u8; 144]).unwrap_err();
    assert!(e.to_string().contains("blk.3.ffn_down.weight") && e.to_string().contains("256"), "{e}");
}
