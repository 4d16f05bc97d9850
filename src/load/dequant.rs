//! ggml's tensor encodings, decoded to f32 on the host: F32, F16, BF16 and the block
//! quantizations Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
//!
//! Block layouts as ggml defines them (ggml-common.h; all little-endian, `f16` = IEEE half):
//!
//! | type | values | bytes | layout |
//! |---|---|---|---|
//! | Q8_0 | 32 | 34 | d: f16, qs: [i8; 32]; y = d * q |
//! | Q4_0 | 32 | 18 | d: f16, qs: [u8; 16]; y[j] = d * (lo(qs[j]) - 8), y[j+16] = d * (hi(qs[j]) - 8) |
//! | Q4_1 | 32 | 20 | d: f16, m: f16, qs: [u8; 16]; y = d * q + m, nibbles as Q4_0 |
//! | Q5_0 | 32 | 22 | d: f16, qh: u32, qs: [u8; 16]; 5th bit of y[j] is bit j of qh; y = d * (q - 16) |
//! | Q5_1 | 32 | 24 | d: f16, m: f16, qh: u32, qs: [u8; 16]; y = d * q + m |
//! | Q4_K | 256 | 144 | d, dmin: f16, scales: [u8; 12] (8 six-bit scales and mins), qs: [u8; 128] |
//! | Q5_K | 256 | 176 | d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] |
//! | Q6_K | 256 | 210 | ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 |
//!
//! Each function decodes whole blocks: `bytes.len()` must be a multiple of the block size
//! in bytes (the GGUF reader checks that before calling). The arithmetic follows ggml's
//! reference `dequantize_row_*` operation for operation in f32 (no fused multiply-add),
//! so results are bit-identical to ggml's and gguf-py's.

use half::{bf16, f16};

/// Super-block size of the K quantizations.
pub const QK_K: usize = 256;

fn h(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub fn f32_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

pub fn f16_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
}

pub fn bf16_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
}

pub fn q8_0(bytes: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(bytes.len() / 34 * 32);
    for b in bytes.chunks_exact(34) {
        let d = h(b, 0);
        y.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
    }
    y
}

pub fn q4_0(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 18 * 32];
    for (b, out) in bytes.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = h(b, 0);
        for (j, &q) in b[2..].iter().enumerate() {
            out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
    y
}

pub fn q4_1(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 20 * 32];
    for (b, out) in bytes.chunks_exact(20).zip(y.chunks_exact_mut(32)) {
        let (d, m) = (h(b, 0), h(b, 2));
        for (j, &q) in b[4..].iter().enumerate() {
            out[j] = (q & 0x0F) as f32 * d + m;
            out[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
    y
}

/// The two 5-bit values of byte `j` of a Q5 block: low nibble + bit j of qh, high nibble
/// + bit j+16.
fn q5_pair(qs: u8, qh: u32, j: usize) -> (u32, u32) {
    let lo = (qs & 0x0F) as u32 | ((qh >> j) & 1) << 4;
    let hi = (qs >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
    (lo, hi)
}

pub fn q5_0(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 22 * 32];
    for (b, out) in bytes.chunks_exact(22).zip(y.chunks_exact_mut(32)) {
        let d = h(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for (j, &q) in b[6..].iter().enumerate() {
            let (lo, hi) = q5_pair(q, qh, j);
            out[j] = (lo as i32 - 16) as f32 * d;
            out[j + 16] = (hi as i32 - 16) as f32 * d;
        }
    }
    y
}

pub fn q5_1(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 24 * 32];
    for (b, out) in bytes.chunks_exact(24).zip(y.chunks_exact_mut(32)) {
        let (d, m) = (h(b, 0), h(b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for (j, &q) in b[8..].iter().enumerate() {
            let (lo, hi) = q5_pair(q, qh, j);
            out[j] = lo as f32 * d + m;
            out[j + 16] = hi as f32 * d + m;
        }
    }
    y
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K:
/// bytes 0..4 hold scales 0..4 (low 6 bits) and the top 2 bits of scales 4..8; bytes 4..8
/// the same for the mins; bytes 8..12 the low 4 bits of scales 4..8 (low nibble) and of
/// mins 4..8 (high nibble). ggml's `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

pub fn q4_k(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 144 * QK_K];
    for (b, out) in bytes.chunks_exact(144).zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (h(b, 0), h(b, 2));
        let scales = &b[4..16];
        let qs = &b[16..144];
        // Four chunks of 64 values; each 32 bytes: low nibbles are sub-block 2i, high 2i+1.
        for i in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * i, scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
            let (d1, dm1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, dm2) = (d * sc2 as f32, dmin * m2 as f32);
            let q = &qs[32 * i..32 * i + 32];
            let o = &mut out[64 * i..64 * i + 64];
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0x0F) as f32 - dm1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - dm2;
            }
        }
    }
    y
}

pub fn q5_k(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 176 * QK_K];
    for (b, out) in bytes.chunks_exact(176).zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (h(b, 0), h(b, 2));
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        // As Q4_K, with the 5th bit of value l of sub-block s in bit s of qh[l].
        for i in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * i, scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
            let (d1, dm1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, dm2) = (d * sc2 as f32, dmin * m2 as f32);
            let q = &qs[32 * i..32 * i + 32];
            let o = &mut out[64 * i..64 * i + 64];
            for l in 0..32 {
                let lo = (q[l] & 0x0F) | ((qh[l] >> (2 * i)) & 1) << 4;
                let hi = (q[l] >> 4) | ((qh[l] >> (2 * i + 1)) & 1) << 4;
                o[l] = d1 * lo as f32 - dm1;
                o[l + 32] = d2 * hi as f32 - dm2;
            }
        }
    }
    y
}

pub fn q6_k(bytes: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; bytes.len() / 210 * QK_K];
    for (b, out) in bytes.chunks_exact(210).zip(y.chunks_exact_mut(QK_K)) {
        let d = h(b, 208);
        // Two halves of 128 values: 64 bytes of low nibbles, 32 of high 2-bit pairs, and 8
        // signed scales (one per 16 values).
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let o = &mut out[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | (qh[l] & 3) << 4) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | ((qh[l] >> 2) & 3) << 4) as i32 - 32;
                let q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i32 - 32;
                o[l] = d * sc[is] as i8 as f32 * q1 as f32;
                o[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                o[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                o[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
    }
    y
}
