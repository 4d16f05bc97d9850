// In-kernel dequantizers of a compact weight operand: a library (functions only) placed
// after common.wgsl by `Kernel::includes` (QUANT_INCLUDES in src/load/compact.rs, after the
// FMT_* codes written from CompactFormat).
//
// The including kernel declares
//     @group(0) @binding(N) var<storage, read> wq: array<u32>;   // the compact tensor's words
// and gets `WFMT` (a FMT_* code) as a prelude constant, so each format is its own pipeline
// and every `switch (WFMT)` below folds to one case. On the Rust side,
// `crate::compact_kernels!(NAME, "<file>", CONSTS...)` (src/ops/dequant.rs) declares the
// eleven kernels, indexed by `CompactFormat::code()`, and `CompactWeight::words` is the
// tensor to bind as `wq` (rows, cols and format travel with it).
//
// wq holds a (rows, cols) row-major matrix in the layout documented in
// src/load/compact.rs: row r starts at word r * wq_row_words(cols); blocks run along a row.
//
// Bit-exactness with the host (src/load/dequant.rs, ggml's dequantize_row_*): every
// product below is exact in f32. Significant bits: an f16 scale 11; a 6-bit K sub-scale
// or min 6; a quant 4 or 5 (Q8_0: 7); Q6_K's 8-bit scale 7 and 6-bit quant 5 (their
// extremes -128 and -32 are powers of two, 1 bit). The largest product, Q6_K's
// d * sc * q, has at most 11 + 7 + 5 = 23 <= 24 bits, and every product is 0 or at least
// 2^-24 (the smallest half), never an f32 subnormal. So the only rounding is the one add
// of Q4_1 / Q5_1 / Q4_K / Q5_K: a compiler that contracts `a * b + c` into an fma gives
// the same bits, and the products are written in the host's order anyway.
//
// f16 scales are decoded with integer operations (wq_f16) rather than unpack2x16float:
// the result is exact either way for normal halves, but drivers may flush f16 subnormals
// in unpack2x16float (SPIR-V lets a denorm mode apply to it), and small Q4_K `dmin`s are
// subnormal halves in real files.

// The f32 value of the IEEE half in the low 16 bits of `h` (inf and NaN kept).
fn wq_f16(h: u32) -> f32 {
    let e = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    // Normal: rebias the exponent (15 -> 127); e = 31: f32 inf/NaN with the same payload.
    var v = bitcast<f32>((select(e + 112u, 255u, e == 31u) << 23u) | (m << 13u));
    if (e == 0u) {
        v = f32(m) * bitcast<f32>(0x33800000u); // m * 2^-24: exact (zero or subnormal half)
    }
    return select(v, -v, (h & 0x8000u) != 0u);
}

// Half `i` (0 low, 1 high) of word `w`.
fn wq_half(w: u32, i: u32) -> u32 {
    return (wq[w] >> (16u * i)) & 0xFFFFu;
}

// Byte k of the words starting at `w`.
fn wq_byte(w: u32, k: u32) -> u32 {
    return extractBits(wq[w + k / 4u], 8u * (k % 4u), 8u);
}

// The four bytes of a word, low first.
fn wq_bytes4(x: u32) -> vec4<u32> {
    return (vec4(x) >> vec4(0u, 8u, 16u, 24u)) & vec4(0xFFu);
}

// The four bytes of a word as signed i8, low first.
fn wq_sbytes4(x: u32) -> vec4<i32> {
    return bitcast<vec4<i32>>(vec4(x) << vec4(24u, 16u, 8u, 0u)) >> vec4(24u);
}

// Values per block of WFMT.
fn wq_qk() -> u32 {
    switch (WFMT) {
        case FMT_F32, FMT_F16, FMT_BF16: { return 1u; }
        case FMT_Q4_K, FMT_Q5_K, FMT_Q6_K: { return 256u; }
        default: { return 32u; }
    }
}

// Words per row of `cols` values (CompactFormat::row_words).
fn wq_row_words(cols: u32) -> u32 {
    let nb = cols / wq_qk();
    let hw = (nb + 1u) / 2u; // the row's f16 scales, two per word
    var w = 0u;
    switch (WFMT) {
        case FMT_F32: { w = cols; }
        case FMT_F16, FMT_BF16: { w = (cols + 1u) / 2u; }
        case FMT_Q8_0: { w = hw + 8u * nb; }
        case FMT_Q4_0: { w = hw + 4u * nb; }
        case FMT_Q5_0: { w = hw + 5u * nb; }
        case FMT_Q4_1: { w = 5u * nb; }
        case FMT_Q5_1: { w = 6u * nb; }
        case FMT_Q4_K: { w = 36u * nb; }
        case FMT_Q5_K: { w = 44u * nb; }
        default: { w = hw + 52u * nb; } // Q6_K
    }
    return w;
}

// Scale and min of sub-block s (0..8) of the Q4_K / Q5_K block at word `blk`: the 12 packed
// bytes start at word blk + 1 (ggml's get_scale_min_k4).
fn wq_scale_min_k4(blk: u32, s: u32) -> vec2<u32> {
    let q = blk + 1u;
    if (s < 4u) {
        return vec2(wq_byte(q, s) & 63u, wq_byte(q, s + 4u) & 63u);
    }
    let b = wq_byte(q, s + 4u);
    return vec2((b & 0xFu) | ((wq_byte(q, s - 4u) >> 6u) << 4u), (b >> 4u) | ((wq_byte(q, s) >> 6u) << 4u));
}

// (d * sc, dmin * m) of the sub-block of element e of the K block at word `blk`.
fn wq_k_scales(blk: u32, e: u32) -> vec2<f32> {
    let dm = wq[blk];
    let sm = wq_scale_min_k4(blk, e / 32u);
    return vec2(wq_f16(dm & 0xFFFFu) * f32(sm.x), wq_f16(dm >> 16u) * f32(sm.y));
}

// Element (row, col) of the (rows, cols) matrix in wq, as f32: the host dequantizer's bits.
fn wq_get(row: u32, col: u32, cols: u32) -> f32 {
    let base = row * wq_row_words(cols);
    let qk = wq_qk();
    let nb = cols / qk;
    let hw = (nb + 1u) / 2u;
    let b = col / qk;  // block within the row
    let e = col % qk;  // element within the block
    var v = 0.0;
    switch (WFMT) {
        case FMT_F32: { v = bitcast<f32>(wq[base + col]); }
        case FMT_F16: { v = wq_f16(wq_half(base + col / 2u, col % 2u)); }
        case FMT_BF16: { v = bitcast<f32>(wq_half(base + col / 2u, col % 2u) << 16u); }
        case FMT_Q8_0: {
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let q = extractBits(bitcast<i32>(wq[base + hw + 8u * b + e / 4u]), 8u * (e % 4u), 8u);
            v = f32(q) * d;
        }
        case FMT_Q4_0: {
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let q = (wq_byte(base + hw + 4u * b, e % 16u) >> (4u * (e / 16u))) & 0xFu;
            v = f32(i32(q) - 8) * d;
        }
        case FMT_Q4_1: {
            let blk = base + 5u * b;
            let q = (wq_byte(blk + 1u, e % 16u) >> (4u * (e / 16u))) & 0xFu;
            v = f32(q) * wq_f16(wq[blk] & 0xFFFFu) + wq_f16(wq[blk] >> 16u);
        }
        case FMT_Q5_0: {
            let blk = base + hw + 5u * b;
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let q = ((wq_byte(blk + 1u, e % 16u) >> (4u * (e / 16u))) & 0xFu) | (((wq[blk] >> e) & 1u) << 4u);
            v = f32(i32(q) - 16) * d;
        }
        case FMT_Q5_1: {
            let blk = base + 6u * b;
            let q = ((wq_byte(blk + 2u, e % 16u) >> (4u * (e / 16u))) & 0xFu) | (((wq[blk + 1u] >> e) & 1u) << 4u);
            v = f32(q) * wq_f16(wq[blk] & 0xFFFFu) + wq_f16(wq[blk] >> 16u);
        }
        case FMT_Q4_K: {
            // 4 chunks of 64: bytes 32i..32i+32 of qs, low nibbles then high nibbles.
            let blk = base + 36u * b;
            let l = e % 64u;
            let q = (wq_byte(blk + 4u, 32u * (e / 64u) + l % 32u) >> (4u * (l / 32u))) & 0xFu;
            let s = wq_k_scales(blk, e);
            v = s.x * f32(q) - s.y;
        }
        case FMT_Q5_K: {
            // As Q4_K, with the 5th bit of element e in bit e / 32 of qh[e % 32].
            let blk = base + 44u * b;
            let l = e % 64u;
            let lo = (wq_byte(blk + 12u, 32u * (e / 64u) + l % 32u) >> (4u * (l / 32u))) & 0xFu;
            let q = lo | (((wq_byte(blk + 4u, e % 32u) >> (e / 32u)) & 1u) << 4u);
            let s = wq_k_scales(blk, e);
            v = s.x * f32(q) - s.y;
        }
        default: { // Q6_K
            // Halves n of 128; quarter qq of 32: ql[64n + 32 (qq & 1) + l] nibble qq >> 1,
            // bits 2 qq of qh[32n + l], scale sc[8n + 2 qq + l / 16].
            let blk = base + hw + 52u * b;
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let n = e / 128u;
            let qq = (e % 128u) / 32u;
            let l = e % 32u;
            let ql = (wq_byte(blk, 64u * n + 32u * (qq & 1u) + l) >> (4u * (qq >> 1u))) & 0xFu;
            let qh = (wq_byte(blk + 32u, 32u * n + l) >> (2u * qq)) & 3u;
            let sk = 8u * n + 2u * qq + l / 16u;
            let sc = extractBits(bitcast<i32>(wq[blk + 48u + sk / 4u]), 8u * (sk % 4u), 8u);
            v = d * f32(sc) * f32(i32(ql | (qh << 4u)) - 32);
        }
    }
    return v;
}

// Elements (row, col4 .. col4 + 3), col4 a multiple of 4 and col4 + 4 <= cols (always so
// for the block formats, whose rows are whole blocks of 32 or 256; the float formats with
// cols % 4 != 0 read their last columns with wq_get). The same bits as four wq_get calls.
fn wq_get4(row: u32, col4: u32, cols: u32) -> vec4<f32> {
    let base = row * wq_row_words(cols);
    let qk = wq_qk();
    let nb = cols / qk;
    let hw = (nb + 1u) / 2u;
    let b = col4 / qk;
    let e = col4 % qk;
    var v = vec4(0.0);
    switch (WFMT) {
        case FMT_F32: {
            let i = base + col4;
            v = bitcast<vec4<f32>>(vec4(wq[i], wq[i + 1u], wq[i + 2u], wq[i + 3u]));
        }
        case FMT_F16: {
            let w0 = wq[base + col4 / 2u];
            let w1 = wq[base + col4 / 2u + 1u];
            v = vec4(wq_f16(w0 & 0xFFFFu), wq_f16(w0 >> 16u), wq_f16(w1 & 0xFFFFu), wq_f16(w1 >> 16u));
        }
        case FMT_BF16: {
            let w0 = wq[base + col4 / 2u];
            let w1 = wq[base + col4 / 2u + 1u];
            v = bitcast<vec4<f32>>(vec4(w0 << 16u, w0 & 0xFFFF0000u, w1 << 16u, w1 & 0xFFFF0000u));
        }
        case FMT_Q8_0: {
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            v = vec4<f32>(wq_sbytes4(wq[base + hw + 8u * b + e / 4u])) * d;
        }
        case FMT_Q4_0: {
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let q = (wq_bytes4(wq[base + hw + 4u * b + (e % 16u) / 4u]) >> vec4(4u * (e / 16u))) & vec4(0xFu);
            v = vec4<f32>(vec4<i32>(q) - vec4(8)) * d;
        }
        case FMT_Q4_1: {
            let blk = base + 5u * b;
            let q = (wq_bytes4(wq[blk + 1u + (e % 16u) / 4u]) >> vec4(4u * (e / 16u))) & vec4(0xFu);
            v = vec4<f32>(q) * wq_f16(wq[blk] & 0xFFFFu) + wq_f16(wq[blk] >> 16u);
        }
        case FMT_Q5_0: {
            let blk = base + hw + 5u * b;
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let lo = (wq_bytes4(wq[blk + 1u + (e % 16u) / 4u]) >> vec4(4u * (e / 16u))) & vec4(0xFu);
            let hi = ((vec4(wq[blk]) >> (vec4(e) + vec4(0u, 1u, 2u, 3u))) & vec4(1u)) << vec4(4u);
            v = vec4<f32>(vec4<i32>(lo | hi) - vec4(16)) * d;
        }
        case FMT_Q5_1: {
            let blk = base + 6u * b;
            let lo = (wq_bytes4(wq[blk + 2u + (e % 16u) / 4u]) >> vec4(4u * (e / 16u))) & vec4(0xFu);
            let hi = ((vec4(wq[blk + 1u]) >> (vec4(e) + vec4(0u, 1u, 2u, 3u))) & vec4(1u)) << vec4(4u);
            v = vec4<f32>(lo | hi) * wq_f16(wq[blk] & 0xFFFFu) + wq_f16(wq[blk] >> 16u);
        }
        case FMT_Q4_K: {
            let blk = base + 36u * b;
            let l = e % 64u;
            let q = (wq_bytes4(wq[blk + 4u + (32u * (e / 64u) + l % 32u) / 4u]) >> vec4(4u * (l / 32u))) & vec4(0xFu);
            let s = wq_k_scales(blk, e);
            v = s.x * vec4<f32>(q) - s.y;
        }
        case FMT_Q5_K: {
            let blk = base + 44u * b;
            let l = e % 64u;
            let lo = (wq_bytes4(wq[blk + 12u + (32u * (e / 64u) + l % 32u) / 4u]) >> vec4(4u * (l / 32u))) & vec4(0xFu);
            let hi = ((wq_bytes4(wq[blk + 4u + (e % 32u) / 4u]) >> vec4(e / 32u)) & vec4(1u)) << vec4(4u);
            let s = wq_k_scales(blk, e);
            v = s.x * vec4<f32>(lo | hi) - s.y;
        }
        default: { // Q6_K
            let blk = base + hw + 52u * b;
            let d = wq_f16(wq_half(base + b / 2u, b % 2u));
            let n = e / 128u;
            let qq = (e % 128u) / 32u;
            let l = e % 32u;
            let ql = (wq_bytes4(wq[blk + (64u * n + 32u * (qq & 1u) + l) / 4u]) >> vec4(4u * (qq >> 1u))) & vec4(0xFu);
            let qh = (wq_bytes4(wq[blk + 32u + (32u * n + l) / 4u]) >> vec4(2u * qq)) & vec4(3u);
            let sk = 8u * n + 2u * qq + l / 16u;
            let sc = extractBits(bitcast<i32>(wq[blk + 48u + sk / 4u]), 8u * (sk % 4u), 8u);
            v = d * f32(sc) * vec4<f32>(vec4<i32>(ql | (qh << vec4(4u))) - vec4(32));
        }
    }
    return v;
}
