//! f32 -> GGUF block bytes: the quantizers behind `--base q8_0|q4_0|q4_k` (and f16 / bf16
//! rounding), giving llama.cpp's reference bytes.
//!
//! - Q8_0, Q4_0: ggml's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`, which gguf-py's
//!   numpy quantizers reproduce bit for bit; tested byte for byte against gguf-py
//!   (tests/fixtures/quants/quantize.safetensors, made by make_quant_fixtures.py).
//! - Q4_K: ggml's `quantize_row_q4_K_ref` (`make_qkx2_quants` with rmin -1, rdelta 0.1,
//!   20 steps, weights av_x + |x|). gguf-py has no Q4_K quantizer, so there is no byte
//!   fixture; it is tested by its round-trip error and by dequantization consistency.
//!   (llama.cpp's C is built with fp-contraction allowed, so even its own bytes can
//!   depend on the compiler; this is the operation order of the C source, no fma.) It
//!   was checked once, outside the test suite, against a C transcription of ggml's
//!   `make_qkx2_quants` + `quantize_row_q4_K_ref` built with gcc -O2 -ffp-contract=off:
//!   identical bytes on 390 blocks (six scales from 1e-6 to 1e4, zero, constant,
//!   one-signed and sparse blocks).
//!
//! All arithmetic is f32 in the C code's order: Rust never contracts `a * b + c`.

use half::f16;

use super::compact::{bf16_bytes, f16_bytes, CompactFormat};
use super::dequant::QK_K;

/// `format`'s GGUF bytes of `values` (whole blocks: `values.len()` a multiple of the
/// block size). `None` for a format without a quantizer here (Q4_1, Q5_*, Q5_K, Q6_K).
pub fn quantize(format: CompactFormat, values: &[f32]) -> Option<Vec<u8>> {
    if !values.len().is_multiple_of(format.block_values()) {
        return None;
    }
    Some(match format {
        CompactFormat::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        CompactFormat::F16 => f16_bytes(values),
        CompactFormat::BF16 => bf16_bytes(values),
        CompactFormat::Q8_0 => q8_0(values),
        CompactFormat::Q4_0 => q4_0(values),
        CompactFormat::Q4_K => q4_k(values),
        _ => return None,
    })
}

fn half(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// ggml's `nearest_int`: round half to even through the f32 mantissa (valid for
/// |x| <= 2^22, which every caller guarantees).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Q8_0: d = amax / 127, q = roundf(x / d) (half away from zero).
pub fn q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half(d));
        out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// Q4_0: d = max / -8 where max is the first value of largest magnitude,
/// q = min(15, (int8)(x / d + 8.5)).
pub fn q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for b in x.chunks_exact(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half(d));
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(b[j]) | q(b[j + 16]) << 4));
    }
    out
}

/// ggml's `make_qkx2_quants` (use_mad false): the scale and the negated min of one
/// sub-block, with its levels in `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(nmax: i32, x: &[f32], w: &[f32], l: &mut [u8], rmin: f32, rdelta: f32, nstep: i32) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_mad += w[i] * (diff * diff);
    }
    let mut laux = vec![0u8; n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let lf = li as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                mad += w[i] * (diff * diff);
            }
            if mad < best_mad {
                l.copy_from_slice(&laux);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K: ggml's `quantize_row_q4_K_ref`.
pub fn q4_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * 144);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let mut sum_x2 = 0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            let w: Vec<f32> = xs.iter().map(|v| av_x + v.abs()).collect();
            let (s, m) = make_qkx2_quants(15, xs, &w, &mut l[32 * j..32 * j + 32], -1.0, 0.1, 20);
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut sc = [0u8; 12];
        for j in 0..8 {
            // `uint8_t ls = nearest_int(...)` then MIN(63, ls): the C truncates to 8 bits first.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        let dh = f16::from_f32(max_scale / 63.0);
        let mh = f16::from_f32(max_min / 63.0);
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &sc);
            let d = dh.to_f32() * s as f32;
            if d == 0.0 {
                continue;
            }
            let dm = mh.to_f32() * m as f32;
            for ii in 0..32 {
                l[32 * j + ii] = nearest_int((xb[32 * j + ii] + dm) / d).clamp(0, 15) as u8;
            }
        }
        out.extend(dh.to_le_bytes());
        out.extend(mh.to_le_bytes());
        out.extend(sc);
        for j in (0..QK_K).step_by(64) {
            out.extend((0..32).map(|i| l[j + i] | l[j + i + 32] << 4));
        }
    }
    out
}

fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}
