use webtune::gpu::Encoder;
use webtune::ops::attention::{
    backward_with, choose, decode, forward_with, kv_append, scratch_len, AttnShape, CacheShape, Variant,
};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::attention::{attention, attention_backward, Shape};
use crate::reference::{assert_grad, dot, numeric_grad};

/// O is a convex mix of V rows; f32 scores (D-term dots), exp and the running sums err by
/// a few ulp (lavapipe worst 4.5e-7 of max|V|); a wrong mask, head or scale moves outputs
/// by O(0.1).
const ATTN_FWD: Tol = Tol { name: "ATTN_FWD", abs: 1e-6, rel: 4e-6 };
/// lse is ~log T + O(max score), its error a few ulp of that (lavapipe worst 3.8e-7).
const ATTN_LSE: Tol = Tol { name: "ATTN_LSE", abs: 1e-6, rel: 2e-6 };
/// delta = rowsum(dOut * O) over D terms of |dOut| ~ 1 times O's own error (ATTN_FWD's
/// 4e-6 of max|V|), plus the sum's rounding; a delta from the wrong row or head, or a dot
/// missing a vec4, is off by O(0.1).
const ATTN_DELTA: Tol = Tol { name: "ATTN_DELTA", abs: 1e-5, rel: 1e-5 };
/// dK/dV sum over up to T * H/Hk queries and dS is a difference (dP - delta) that cancels,
/// so errors grow with T (lavapipe worst 3.7e-6 at T = 130); 2e-5 of max|grad| still fails
/// a missed or extra (query, key) pair, whose term is O(1/T) of the scale or more.
/// abs: a gradient that is zero by cancellation (a query that sees one key: P = 1 and
/// dP - delta = 0, which the dQ and dK/dV kernels compute in separate passes) comes out
/// as that difference's rounding, ~2^-24 |dP| (|dP| ~ 3 here) per head of the group, and
/// SPIR-V's Fma may or may not fuse in either pass (lavapipe worst 2.0e-6 at H/Hk = 4 with
/// head-size-constant loops); a missed pair errs by O(1).
const ATTN_BWD: Tol = Tol { name: "ATTN_BWD", abs: 5e-6, rel: 2e-5 };

/// Packed sequences: several segments of random length, then a padding segment (id 0).
fn packed_segments(rng: &mut Rng, b: usize, t: usize) -> Vec<u32> {
    let mut seg = Vec::with_capacity(b * t);
    for _ in 0..b {
        let pad = if t >= 4 { 1 + rng.below(t / 4) } else { 0 };
        let mut id = 7u32;
        let mut left = 0;
        for i in 0..t {
            if i >= t - pad {
                seg.push(0);
                continue;
            }
            if left == 0 {
                id += 1 + rng.below(3) as u32;
                left = 1 + rng.below(t.div_ceil(3));
            }
            left -= 1;
            seg.push(id);
        }
    }
    seg
}

struct Worst {
    fwd: f64,
    lse: f64,
    bwd: f64,
}

/// Both layouts the table picks: CPU adapters' (64 threads, unsplit dK/dV) and GPUs' (128
/// threads, dK/dV split over heads and query chunks), each run on this adapter.
fn variants() -> [Variant; 2] {
    [choose(true), choose(false)]
}

/// The (lse, delta) pairs the forward and backward leave in the lse buffer, as two vectors.
fn unzip_pairs(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    (x.iter().step_by(2).copied().collect(), x.iter().skip(1).step_by(2).copied().collect())
}

/// delta (B*H*T) = rowsum(dOut * O) per (b, h, t), from the float64 O.
fn delta_ref(s: &AttnShape, dout: &[f64], o: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; s.b * s.h * s.t];
    for (n, x) in out.iter_mut().enumerate() {
        let (b, h, t) = (n / (s.h * s.t), n / s.t % s.h, n % s.t);
        let base = ((b * s.t + t) * s.h + h) * s.d;
        *x = dot(&dout[base..base + s.d], &o[base..base + s.d]);
    }
    out
}

fn run_case(rng: &mut Rng, s: AttnShape, packed: bool, q_scale: f64, worst: &mut Worst) {
    let g = gpu();
    let rows = s.b * s.t;
    let (qn, kn) = (rows * s.h * s.d, rows * s.hk * s.d);
    let q = rng.vec(qn, q_scale);
    let k = rng.vec(kn, 1.0);
    let v = rng.vec(kn, 1.0);
    let dout = rng.vec(qn, 1.0);
    let seg = if packed { packed_segments(rng, s.b, s.t) } else { vec![0; rows] };
    let rs = Shape { b: s.b, t: s.t, h: s.h, hk: s.hk, d: s.d, window: s.window, scale: s.scale.map(|x| x as f64) };
    let (qd, kd, vd, dod) = (f64s(&q), f64s(&k), f64s(&v), f64s(&dout));
    let (o_ref, lse_ref) = attention(&rs, &qd, &kd, &vd, &seg);
    let (dq_ref, dk_ref, dv_ref) = attention_backward(&rs, &qd, &kd, &vd, &seg, &dod);

    let up = |name: &str, x: &[f32]| g.upload_f32(name, x).unwrap();
    let (tq, tk, tv, tdo) = (up("q", &q), up("k", &k), up("v", &v), up("dout", &dout));
    let tseg = g.upload_u32("seg", &seg).unwrap();
    for var in variants() {
        // Outputs and scratch start as garbage: every element read must have been written.
        let to = up("o", &vec![1e30; qn]);
        let tlse = up("lse", &vec![1e30; 2 * s.b * s.h * s.t]);
        let tscr = up("scratch", &vec![1e30; scratch_len(rows, s.h, s.hk, s.d)]);
        let (tdq, tdk, tdv) = (up("dq", &vec![1e30; qn]), up("dk", &vec![1e30; kn]), up("dv", &vec![1e30; kn]));
        let mut enc = Encoder::new(g);
        forward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse);
        backward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse, &tdo, &tscr, &tdq, &tdk, &tdv);
        enc.submit();
        let what = format!(
            "attention {var:?} B {} T {} H {} Hk {} D {} {} q*{q_scale} window {:?} scale {:?}",
            s.b,
            s.t,
            s.h,
            s.hk,
            s.d,
            if packed { "packed" } else { "one segment" },
            s.window,
            s.scale
        );
        let rd = |t| block(g.read_f32(t)).unwrap();
        worst.fwd = worst.fwd.max(check(&format!("{what} o"), &rd(&to), &o_ref, ATTN_FWD));
        let (lse, delta) = unzip_pairs(&rd(&tlse));
        worst.lse = worst.lse.max(check(&format!("{what} lse"), &lse, &lse_ref, ATTN_LSE));
        check(&format!("{what} delta"), &delta, &delta_ref(&s, &dod, &o_ref), ATTN_DELTA);
        worst.bwd = worst.bwd.max(check(&format!("{what} dq"), &rd(&tdq), &dq_ref, ATTN_BWD));
        worst.bwd = worst.bwd.max(check(&format!("{what} dk"), &rd(&tdk), &dk_ref, ATTN_BWD));
        worst.bwd = worst.bwd.max(check(&format!("{what} dv"), &rd(&tdv), &dv_ref, ATTN_BWD));
    }
}

#[test]
fn attention_matches_reference() {
    let mut rng = Rng::new(21);
    let mut worst = Worst { fwd: 0.0, lse: 0.0, bwd: 0.0 };
    let mut n = 0;
    for t in [1usize, 5, 33, 70] {
        for d in [8usize, 24, 64] {
            for (h, hk) in [(2usize, 2usize), (6, 2), (4, 1)] {
                for b in [1usize, 3] {
                    for packed in [false, true] {
                        // Sharper softmaxes every other case, so the running max moves.
                        let q_scale = if n % 2 == 0 { 1.0 } else { 3.0 };
                        run_case(
                            &mut rng,
                            AttnShape { b, t, h, hk, d, window: None, scale: None },
                            packed,
                            q_scale,
                            &mut worst,
                        );
                        n += 1;
                    }
                }
            }
        }
    }
    // The largest head size, whose tile holds the fewest rows (15), across several tiles.
    for (t, packed) in [(70, false), (130, true)] {
        run_case(
            &mut rng,
            AttnShape { b: 2, t, h: 3, hk: 1, d: 128, window: None, scale: None },
            packed,
            1.0,
            &mut worst,
        );
    }
    eprintln!(
        "attention: worst errors x max|want|: o {:.2e} ({}), lse {:.2e} ({}), grads {:.2e} ({})",
        worst.fwd, ATTN_FWD.name, worst.lse, ATTN_LSE.name, worst.bwd, ATTN_BWD.name
    );
}

/// Sliding-window attention (Gemma 3's local layers) with an own scale: windows of 1 key
/// (each query sees itself only), shorter than a tile, and crossing the 64-row blocks; packed
/// and plain; forward and every gradient against the f64 reference with the window mask.
#[test]
fn sliding_window_attention_matches_reference() {
    let mut rng = Rng::new(23);
    let mut worst = Worst { fwd: 0.0, lse: 0.0, bwd: 0.0 };
    for (t, window, d, packed) in
        [(9, 1, 8, false), (33, 4, 24, true), (70, 17, 16, false), (130, 70, 8, true), (130, 64, 64, false)]
    {
        let s = AttnShape { b: 2, t, h: 4, hk: 2, d, window: Some(window), scale: Some(0.2) };
        run_case(&mut rng, s, packed, 2.0, &mut worst);
    }
    eprintln!("sliding-window attention: worst o {:.2e}, lse {:.2e}, grads {:.2e}", worst.fwd, worst.lse, worst.bwd);
    let bad = AttnShape { b: 1, t: 4, h: 2, hk: 1, d: 8, window: Some(0), scale: None };
    assert!(bad.validate().unwrap_err().to_string().contains("window"));
    let bad = AttnShape { window: None, scale: Some(f32::NAN), ..bad };
    assert!(bad.validate().is_err());
}

/// Head sizes the small cases above do not reach, up to Gemma 3's 256 (tiles of 7 rows):
/// awkward ones (40, 80, 96: vec4 counts that divide neither tile nor threads), odd T and T
/// past one or two workgroups of either layout, GQA ratios 1, 2 and 4, causal with and
/// without a sliding window. T = 300 splits the dK/dV of the GPU layout into 3 query chunks
/// per head (2 with the window), so the reduction adds several partials per key block.
#[test]
fn attention_head_sizes_match_reference() {
    let mut rng = Rng::new(25);
    let mut worst = Worst { fwd: 0.0, lse: 0.0, bwd: 0.0 };
    for &(b, t, h, hk, d, window, packed) in &[
        (2usize, 33usize, 4usize, 1usize, 40usize, None, false),
        (1, 130, 2, 1, 80, Some(50), true),
        (2, 67, 4, 2, 96, None, true),
        (1, 129, 4, 4, 128, Some(9), false),
        (1, 70, 4, 1, 256, None, false),
        (1, 131, 2, 1, 256, Some(100), true),
        (2, 37, 2, 2, 256, None, true),
        (1, 300, 2, 1, 16, None, false),
        (1, 300, 4, 2, 64, Some(100), true),
    ] {
        let s = AttnShape { b, t, h, hk, d, window, scale: None };
        run_case(&mut rng, s, packed, 2.0, &mut worst);
    }
    eprintln!("attention head sizes: worst o {:.2e}, lse {:.2e}, grads {:.2e}", worst.fwd, worst.lse, worst.bwd);
}

/// Two runs of the forward and backward give the same bits, in both layouts (the split
/// dK/dV's reduction adds its partials in a fixed order, no atomics).
#[test]
fn attention_is_deterministic() {
    let g = gpu();
    let mut rng = Rng::new(26);
    let s = AttnShape { b: 2, t: 150, h: 4, hk: 1, d: 64, window: None, scale: None };
    let rows = s.b * s.t;
    let (qn, kn) = (rows * s.h * s.d, rows * s.hk * s.d);
    let up = |name: &str, x: &[f32]| g.upload_f32(name, x).unwrap();
    let (tq, tk, tv, tdo) = (
        up("q", &rng.vec(qn, 2.0)),
        up("k", &rng.vec(kn, 1.0)),
        up("v", &rng.vec(kn, 1.0)),
        up("do", &rng.vec(qn, 1.0)),
    );
    let tseg = g.upload_u32("seg", &packed_segments(&mut rng, s.b, s.t)).unwrap();
    for var in variants() {
        let run = || {
            let (to, tlse) = (g.zeros("o", qn).unwrap(), g.zeros("lse", 2 * s.b * s.h * s.t).unwrap());
            let tscr = g.zeros("scratch", scratch_len(rows, s.h, s.hk, s.d)).unwrap();
            let (tdq, tdk, tdv) = (g.zeros("dq", qn).unwrap(), g.zeros("dk", kn).unwrap(), g.zeros("dv", kn).unwrap());
            let mut enc = Encoder::new(g);
            forward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse);
            backward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse, &tdo, &tscr, &tdq, &tdk, &tdv);
            enc.submit();
            [&to, &tlse, &tdq, &tdk, &tdv]
                .map(|t| block(g.read_f32(t)).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        };
        assert!(run() == run(), "{var:?}: two runs differ");
    }
}

#[test]
fn reference_window_attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(24);
    let s = Shape { b: 1, t: 6, h: 2, hk: 1, d: 3, window: Some(2), scale: Some(0.7) };
    let seg = [0u32; 6];
    let q = f64s(&rng.vec(6 * 2 * 3, 1.0));
    let k = f64s(&rng.vec(6 * 3, 1.0));
    let v = f64s(&rng.vec(6 * 3, 1.0));
    let proj = f64s(&rng.vec(6 * 2 * 3, 1.0));
    let (dq, dk, dv) = attention_backward(&s, &q, &k, &v, &seg, &proj);
    let h = 1e-5;
    assert_grad("window dq", &dq, &numeric_grad(&q, h, |q| dot(&proj, &attention(&s, q, &k, &v, &seg).0)));
    assert_grad("window dk", &dk, &numeric_grad(&k, h, |k| dot(&proj, &attention(&s, &q, k, &v, &seg).0)));
    assert_grad("window dv", &dv, &numeric_grad(&v, h, |v| dot(&proj, &attention(&s, &q, &k, v, &seg).0)));
}

#[test]
fn attention_rejects_unsupported_head_sizes() {
    for d in [0usize, 6, 130, 260, 512] {
        let err =
            AttnShape { b: 1, t: 4, h: 2, hk: 1, d, window: None, scale: None }.validate().unwrap_err().to_string();
        assert!(err.contains("head size"), "D {d}: {err}");
    }
    assert!(AttnShape { b: 1, t: 4, h: 3, hk: 2, d: 64, window: None, scale: None }.validate().is_err());
    assert!(AttnShape { b: 1, t: 4, h: 4, hk: 2, d: 128, window: None, scale: None }.validate().is_ok());
    assert!(AttnShape { b: 1, t: 4, h: 4, hk: 2, d: 256, window: None, scale: None }.validate().is_ok());
}

#[test]
fn reference_attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(22);
    // GQA (2 query heads per kv head), two sequences, one of them packed with two segments.
    let s = Shape { b: 2, t: 4, h: 4, hk: 2, d: 3, window: None, scale: None };
    let seg = [0u32, 0, 0, 0, 5, 5, 6, 6];
    let rows = s.b * s.t;
    let q = f64s(&rng.vec(rows * s.h * s.d, 1.0));
    let k = f64s(&rng.vec(rows * s.hk * s.d, 1.0));
    let v = f64s(&rng.vec(rows * s.hk * s.d, 1.0));
    let proj = f64s(&rng.vec(rows * s.h * s.d, 1.0));
    let (dq, dk, dv) = attention_backward(&s, &q, &k, &v, &seg, &proj);
    let h = 1e-5;
    assert_grad("attention dq", &dq, &numeric_grad(&q, h, |q| dot(&proj, &attention(&s, q, &k, &v, &seg).0)));
    assert_grad("attention dk", &dk, &numeric_grad(&k, h, |k| dot(&proj, &attention(&s, &q, k, &v, &seg).0)));
    assert_grad("attention dv", &dv, &numeric_grad(&v, h, |v| dot(&proj, &attention(&s, &q, &k, v, &seg).0)));
}

/// Decoding against a KV cache: the sequences go through in chunks (B, tc) of new rows whose
/// K/V are appended to caches with spare room, each query attending to the cache up to its
/// own position; the outputs must equal full causal attention. Head sizes the fixtures do
/// not reach: D = 96 (24 vec4s, which do not divide the 64 threads), 128 and 256; lengths that
/// cross the kernel's 64-key tiles; GQA.
#[test]
fn cached_decoding_matches_causal_attention() {
    let g = gpu();
    let mut rng = Rng::new(31);
    let mut worst = 0f64;
    // The last two: sliding windows (Gemma 3's local layers) of 5 and 70 keys, with an own
    // scale, over chunks that cross the window's start.
    for &(b, t, h, hk, d, chunk, window, scale) in &[
        (2, 70, 4, 2, 96, 32, None, None),
        (1, 130, 2, 1, 128, 64, None, None),
        (2, 9, 3, 3, 4, 1, None, None),
        (1, 66, 6, 2, 64, 5, None, None),
        (2, 40, 4, 1, 16, 3, Some(5), Some(0.125f32)),
        (1, 150, 2, 2, 8, 64, Some(70), None),
        // Gemma 3's head size 256: one thread group of DV = 64 threads per 64-thread block.
        (1, 70, 4, 1, 256, 16, None, None),
        (2, 40, 2, 2, 256, 7, Some(9), Some(0.0625)),
    ] {
        let rs = Shape { b, t, h, hk, d, window, scale: scale.map(|x| x as f64) };
        let (q, k, v) = (rng.vec(b * t * h * d, 1.0), rng.vec(b * t * hk * d, 1.0), rng.vec(b * t * hk * d, 1.0));
        let (want, _) = attention(&rs, &f64s(&q), &f64s(&k), &f64s(&v), &vec![0; b * t]);
        let cap = t + 3;
        let kc = g.zeros("k_cache", b * cap * hk * d).unwrap();
        let vc = g.zeros("v_cache", b * cap * hk * d).unwrap();
        let mut got = vec![0f32; b * t * h * d];
        let mut c0 = 0;
        while c0 < t {
            let tc = chunk.min(t - c0);
            // Rows (b, c0..c0 + tc) of a (B, T, width) tensor, as (B, tc, width).
            let take = |x: &[f32], w: usize| -> Vec<f32> {
                (0..b).flat_map(|bi| x[(bi * t + c0) * w..(bi * t + c0 + tc) * w].to_vec()).collect()
            };
            let pos: Vec<u32> = (0..b).flat_map(|_| (c0..c0 + tc).map(|p| p as u32)).collect();
            let s = CacheShape { b, t: tc, h, hk, d, cap, window, scale };
            let (tq, tk, tv) = (take(&q, h * d), take(&k, hk * d), take(&v, hk * d));
            let tq = g.upload_f32("q", &tq).unwrap();
            let (tk, tv) = (g.upload_f32("k", &tk).unwrap(), g.upload_f32("v", &tv).unwrap());
            let tpos = g.upload_u32("pos", &pos).unwrap();
            let o = g.zeros("o", b * tc * h * d).unwrap();
            let mut enc = Encoder::new(g);
            kv_append(&mut enc, &s, &tk, &tv, &tpos, &kc, &vc);
            decode(&mut enc, &s, &tq, &kc, &vc, &tpos, &o, b * (tc * c0 + tc * (tc + 1) / 2));
            enc.submit();
            let out = block(g.read_f32(&o)).unwrap();
            for bi in 0..b {
                let dst = (bi * t + c0) * h * d;
                got[dst..dst + tc * h * d].copy_from_slice(&out[bi * tc * h * d..(bi + 1) * tc * h * d]);
            }
            c0 += tc;
        }
        let what = format!("cached decoding B {b} T {t} H {h} Hk {hk} D {d} in chunks of {chunk}, window {window:?}");
        worst = worst.max(check(&what, &got, &want, ATTN_FWD));
    }
    eprintln!("cached decoding: worst relative error {worst:.2e}");
}

/// Lavapipe timing of the attention passes at SmolLM2-135M's shape (9 heads over 3 kv heads,
/// D 64, batch 4) and head sizes 128 and 256, in both layouts: best of 3 after a warm-up,
/// forward and backward separately. Not a correctness test: `cargo test --test ops
/// attention_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_timing() {
    let g = gpu();
    let mut rng = Rng::new(5);
    for &(b, t, h, hk, d) in
        &[(4usize, 128usize, 9usize, 3usize, 64usize), (4, 256, 9, 3, 64), (1, 256, 4, 1, 128), (1, 256, 4, 1, 256)]
    {
        let s = AttnShape { b, t, h, hk, d, window: None, scale: None };
        let rows = b * t;
        let (qn, kn) = (rows * h * d, rows * hk * d);
        let up = |name: &str, x: &[f32]| g.upload_f32(name, x).unwrap();
        let (tq, tk, tv, tdo) = (
            up("q", &rng.vec(qn, 1.0)),
            up("k", &rng.vec(kn, 1.0)),
            up("v", &rng.vec(kn, 1.0)),
            up("do", &rng.vec(qn, 1.0)),
        );
        let tseg = g.upload_u32("seg", &vec![0; rows]).unwrap();
        let (to, tlse) = (g.zeros("o", qn).unwrap(), g.zeros("lse", 2 * b * h * t).unwrap());
        let (tdq, tdk, tdv) = (g.zeros("dq", qn).unwrap(), g.zeros("dk", kn).unwrap(), g.zeros("dv", kn).unwrap());
        let tscr = g.zeros("scratch", scratch_len(rows, h, hk, d)).unwrap();
        for var in variants() {
            let mut best = [f64::MAX; 2];
            for _ in 0..4 {
                for (i, best) in best.iter_mut().enumerate() {
                    let t0 = std::time::Instant::now();
                    let mut enc = Encoder::new(g);
                    if i == 0 {
                        forward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse);
                    } else {
                        backward_with(
                            &mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse, &tdo, &tscr, &tdq, &tdk, &tdv,
                        );
                    }
                    enc.submit();
                    block(g.read_f32(&tlse)).unwrap();
                    *best = best.min(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            eprintln!(
                "attention timing {var:?} B {b} T {t} H {h} Hk {hk} D {d}: forward {:.1} ms, backward {:.1} ms",
                best[0], best[1]
            );
        }
    }
}
