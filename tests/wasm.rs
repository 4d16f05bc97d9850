//! The engine in a real browser: headless Chromium's WebGPU (SwiftShader in CI), run by
//! wasm-bindgen-test-runner. Proves the device comes up, the WGSL kernels compile and run
//! on WebGPU, and async readback completes from the browser's event loop.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test --target wasm32-unknown-unknown --test wasm`
//! (see scripts/test.sh). Logs show with `-- --nocapture`, and always on failure.
//!
//! SwiftShader is slow (about 1.5 GFLOP/s): keep shapes small here; the exhaustive per-op
//! tests run natively (tests/ops).
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use webtune::gpu::{Encoder, Gpu};
use webtune::ops::matmul::{matmul, matmul_variant, vec4_fits, Extras, KSplit, Op, Variant};
use webtune::train::{AdamW, Example, LossMode, TrainConfig, Trainer};

wasm_bindgen_test_configure!(run_in_browser);

// ---------------------------------------------------------------------------------------
// Helpers: device, deterministic inputs, f64 references, and tensor comparison.
// (tests/common is native-only: it blocks on futures with pollster.)
// ---------------------------------------------------------------------------------------

async fn gpu() -> Gpu {
    match Gpu::new().await {
        Ok(g) => g,
        Err(e) => {
            // Say what the browser offers before failing, so a CI log alone can tell a
            // missing flag from a driver problem.
            let diag = webgpu_diagnostics().await;
            panic!("Gpu::new failed in the browser: {e}\n{diag}");
        }
    }
}

/// The library's SplitMix64, as in tests/common, so inputs match the native tests'.
use webtune::rng::Rng;

/// A named tolerance: |got - want| <= abs + rel * max|want| for every element.
#[derive(Clone, Copy, Debug)]
struct Tol {
    name: &'static str,
    abs: f64,
    rel: f64,
}

/// f32 sums of K random-signed products err by ~sqrt(K) * 2^-24 of the output scale; the
/// same bound as the native matmul tests.
const MATMUL: Tol = Tol { name: "MATMUL", abs: 1e-6, rel: 2e-6 };

/// Compare a GPU tensor with its f64 reference; panic naming the worst element.
/// Returns the worst error relative to max|want|.
fn check(what: &str, got: &[f32], want: &[f64], tol: Tol) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    let bound = tol.abs + tol.rel * scale;
    let mut worst = (0usize, -1f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_finite() { (g as f64 - w).abs() } else { f64::INFINITY };
        if e > worst.1 {
            worst = (i, e);
        }
    }
    let (i, e) = worst;
    assert!(
        e <= bound,
        "{what}: worst element [{i}] got {} want {} (|err| {e:.3e} > bound {bound:.3e} = {} abs {:.1e} + rel {:.1e} x max|want| {scale:.3e})",
        got[i], want[i], tol.name, tol.abs, tol.rel
    );
    if scale > 0.0 {
        e / scale
    } else {
        e
    }
}

/// The logical (rows, cols) matrix of an operand stored as itself (`Op::N`) or as its
/// transpose (`Op::T`), in f64.
fn logical(stored: &[f32], op: Op, rows: usize, cols: usize) -> Vec<f64> {
    match op {
        Op::N => stored.iter().map(|&v| v as f64).collect(),
        Op::T => {
            let mut t = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    t[r * cols + c] = stored[c * rows + r] as f64;
                }
            }
            t
        }
    }
}

/// C(m, n) = A(m, k) . B(k, n) in f64, row-major logical matrices.
fn matmul_ref(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j];
            }
        }
    }
    c
}

/// `navigator.gpu`, the adapter the browser gives, its info, features and key limits, read
/// through JS directly (independent of wgpu), as one printable report.
async fn webgpu_diagnostics() -> String {
    fn get(v: &JsValue, key: &str) -> JsValue {
        js_sys::Reflect::get(v, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    }
    fn show(v: &JsValue) -> String {
        v.as_string().or_else(|| v.as_f64().map(|f| f.to_string())).unwrap_or_else(|| format!("{v:?}"))
    }
    let navigator = get(&js_sys::global(), "navigator");
    let user_agent = show(&get(&navigator, "userAgent"));
    let gpu = get(&navigator, "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return format!(
            "navigator.gpu is undefined (userAgent {user_agent}): WebGPU is off. Chromium needs \
             --enable-unsafe-webgpu (webdriver.json) and the new headless mode."
        );
    }
    let request: js_sys::Function = get(&gpu, "requestAdapter").unchecked_into();
    let adapter = match request.call0(&gpu) {
        Ok(p) => JsFuture::from(js_sys::Promise::from(p)).await,
        Err(e) => Err(e),
    };
    let adapter = match adapter {
        Ok(a) if !a.is_null() && !a.is_undefined() => a,
        Ok(_) => return format!("navigator.gpu exists but requestAdapter() gave null (userAgent {user_agent})"),
        Err(e) => return format!("navigator.gpu.requestAdapter() threw {e:?} (userAgent {user_agent})"),
    };
    let info = get(&adapter, "info");
    let features = get(&adapter, "features");
    let has: js_sys::Function = get(&features, "has").unchecked_into();
    let feature = |name: &str| has.call1(&features, &JsValue::from_str(name)).ok().and_then(|v| v.as_bool());
    let limits = get(&adapter, "limits");
    let mut s = format!("userAgent: {user_agent}\nWebGPU adapter:");
    for key in ["vendor", "architecture", "device", "description"] {
        s += &format!(" {key}={:?}", show(&get(&info, key)));
    }
    s += "\nfeatures:";
    for f in ["shader-f16", "subgroups", "timestamp-query"] {
        s += &format!(" {f}={:?}", feature(f));
    }
    s += "\nlimits:";
    for key in [
        "maxStorageBufferBindingSize",
        "maxBufferSize",
        "maxComputeInvocationsPerWorkgroup",
        "maxComputeWorkgroupStorageSize",
        "maxStorageBuffersPerShaderStage",
    ] {
        s += &format!(" {key}={}", show(&get(&limits, key)));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Device
// ---------------------------------------------------------------------------------------

#[wasm_bindgen_test]
async fn webgpu_adapter_comes_up() {
    console_log!("{}", webgpu_diagnostics().await);
    let g = gpu().await;
    console_log!(
        "wgpu: name={:?} backend={} device_type={} software={} max_binding={} MiB",
        g.info.name,
        g.info.backend,
        g.info.device_type,
        g.info.software,
        g.max_binding() >> 20
    );
    assert_eq!(g.info.backend, "BrowserWebGpu", "expected the browser's WebGPU, got {:?}", g.info);
}

// ---------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------

/// Awkward shapes (1, primes, sizes straddling the 64-wide tile and the 16-deep K step),
/// every transpose, plain and accumulating, against an f64 matmul.
/// Tint (Chromium's WGSL compiler) is stricter than naga in places: every kernel file must
/// compile here too, including the ones no other browser test reaches.
#[wasm_bindgen_test]
async fn every_kernel_compiles_under_tint() {
    let g = gpu().await;
    let mut errors = Vec::new();
    use webtune::ops::matmul::{MATMUL_F16, MATMUL_SUBGROUP};
    // The optional extras where this browser's adapter offers them.
    let extras = [(g.shader_f16, &MATMUL_F16), (g.subgroups, &MATMUL_SUBGROUP)];
    let extras: Vec<_> = extras.into_iter().filter(|e| e.0).map(|e| e.1).collect();
    for k in webtune::ops::KERNELS.iter().copied().chain(extras.iter().copied()) {
        if let Some(e) = webtune::gpu::compile_error(&g, k).await {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let names: Vec<_> = extras.iter().map(|k| k.name).collect();
    console_log!("{} kernel files compile under Tint, and the extras {names:?}", webtune::ops::KERNELS.len());
}

/// The in-kernel dequantizers on WebGPU (Tint's compiler, SwiftShader's arithmetic, no
/// shader-f16): every format, random blocks whose f16 scales include zeros and subnormals,
/// expanded whole (wq_get and wq_get4) and gathered, bit for bit against the host
/// dequantizer, as tests/ops/dequant.rs does natively on more shapes.
#[wasm_bindgen_test]
async fn compact_dequant_matches_host_bit_for_bit() {
    use webtune::load::compact::{dequantize_gguf, CompactFormat, CompactTensor};
    use webtune::ops::dequant::{dequant_rows, CompactWeight};
    let g = gpu().await;
    let mut rng = Rng::new(93);
    // Every sign, zero, subnormal (exponent 0) and normal halves up to 2^6.
    let half = |rng: &mut Rng| -> [u8; 2] {
        let (e, m, s) = (rng.below(22) as u16, rng.below(1024) as u16, (rng.below(2) as u16) << 15);
        (if rng.below(20) == 0 { s } else { s | e << 10 | m }).to_le_bytes()
    };
    for &f in CompactFormat::ALL {
        let qk = f.block_values();
        let (rows, cols) = if qk == 1 { (3, 12) } else { (3, 3 * qk) };
        let bb = f.gguf_block_bytes();
        let n_bytes = rows * cols / qk * bb;
        let mut bytes: Vec<u8> = (0..n_bytes).map(|_| rng.below(256) as u8).collect();
        let scales: &[usize] = match f {
            CompactFormat::F32 | CompactFormat::BF16 => &[],
            CompactFormat::F16 => &[0],
            CompactFormat::Q8_0 | CompactFormat::Q4_0 | CompactFormat::Q5_0 => &[0],
            CompactFormat::Q6_K => &[208],
            _ => &[0, 2],
        };
        for b in bytes.chunks_exact_mut(bb) {
            for &o in scales {
                b[o..o + 2].copy_from_slice(&half(&mut rng));
            }
        }
        if matches!(f, CompactFormat::F32 | CompactFormat::BF16) {
            // Finite values only: clear one exponent bit where all are set.
            let w = if f == CompactFormat::F32 { 4 } else { 2 };
            for v in bytes.chunks_exact_mut(w) {
                if v[w - 1] & 0x7F == 0x7F && v[w - 2] & 0x80 != 0 {
                    v[w - 1] &= !0x40;
                }
            }
        }
        let want = dequantize_gguf(f, &bytes);
        let t = CompactTensor::from_gguf("w", f, rows, cols, &bytes).unwrap();
        let w = CompactWeight::upload(&g, "wq", &t).unwrap();
        let ids = [2u32, 0, 2, 1];
        let tids = g.upload_u32("ids", &ids).unwrap();
        let (o1, o4, og) = (
            g.zeros("o1", rows * cols).unwrap(),
            g.zeros("o4", rows * cols).unwrap(),
            g.zeros("og", 4 * cols).unwrap(),
        );
        let mut enc = Encoder::new(&g);
        dequant_rows(&mut enc, &w, None, &o1, rows, false).unwrap();
        dequant_rows(&mut enc, &w, None, &o4, rows, true).unwrap();
        dequant_rows(&mut enc, &w, Some(&tids), &og, ids.len(), false).unwrap();
        enc.submit();
        let want_g: Vec<f32> =
            ids.iter().flat_map(|&r| want[r as usize * cols..(r as usize + 1) * cols].to_vec()).collect();
        for (what, out, want) in [("wq_get", &o1, &want), ("wq_get4", &o4, &want), ("gathered", &og, &want_g)] {
            let got = g.read_f32(out).await.unwrap();
            let bad = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits());
            assert!(
                bad.is_none(),
                "{} {what}: [{}] {:e} vs host {:e}",
                f.name(),
                bad.unwrap(),
                got[bad.unwrap()],
                want[bad.unwrap()]
            );
        }
    }
    console_log!("{} compact formats: GPU dequantization bit-identical to the host", CompactFormat::ALL.len());
}

#[wasm_bindgen_test]
async fn matmul_all_transposes_match_reference() {
    let g = gpu().await;
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[(1, 1, 1), (63, 65, 15), (70, 33, 129), (3, 130, 40), (70, 8, 129), (8, 130, 40), (68, 36, 20)]
    {
        // Every kernel of the family that can hold this shape, not only the one the table
        // picks for SwiftShader.
        let mut variants = vec![Variant::Large, Variant::Tiled, Variant::Reg, Variant::Dot];
        if n <= 16 {
            variants.push(Variant::Skinny);
        }
        if m <= 16 {
            variants.push(Variant::SkinnyT);
        }
        for a_op in [Op::N, Op::T] {
            for b_op in [Op::N, Op::T] {
                let mut variants = variants.clone();
                if vec4_fits((m, n, k), (a_op, b_op)) {
                    variants.push(Variant::Reg4);
                }
                let a = rng.vec(m * k, 1.0);
                let b = rng.vec(k * n, 1.0);
                let c0 = rng.vec(m * n, 1.0);
                let want = matmul_ref(&logical(&a, a_op, m, k), &logical(&b, b_op, k, n), m, n, k);
                let want_acc: Vec<f64> = want.iter().zip(&c0).map(|(w, c)| w + *c as f64).collect();

                let ta = g.upload_f32("a", &a).unwrap();
                let tb = g.upload_f32("b", &b).unwrap();
                for &v in &variants {
                    let tc = g.zeros("c", m * n).unwrap();
                    let tacc = g.upload_f32("acc", &c0).unwrap();
                    let mut enc = Encoder::new(&g);
                    let ex = Extras::default();
                    matmul_variant(&mut enc, v, (m, n, k), 1.0, &ta, a_op, &tb, b_op, ex, &tc, false);
                    matmul_variant(&mut enc, v, (m, n, k), 1.0, &ta, a_op, &tb, b_op, ex, &tacc, true);
                    enc.submit();
                    let what = format!("matmul {v:?} {m}x{n}x{k} {a_op:?}{b_op:?}");
                    let err = check(&what, &g.read_f32(&tc).await.unwrap(), &want, MATMUL);
                    check(&format!("{what} accumulate"), &g.read_f32(&tacc).await.unwrap(), &want_acc, MATMUL);
                    console_log!("{what}: worst relative error {err:.2e}");
                    if v.splits_across_workgroups() && k > 16 {
                        // Split-K across workgroups (`KSplit`, GPUs): 3 ranges of k, then their sum.
                        let scratch = g.zeros("split scratch", 3 * m * n).unwrap();
                        let split = Extras { k_split: Some(KSplit { scratch: &scratch, ranges: 3 }), ..ex };
                        let mut enc = Encoder::new(&g);
                        matmul_variant(&mut enc, v, (m, n, k), 1.0, &ta, a_op, &tb, b_op, split, &tacc, true);
                        enc.submit();
                        let want2: Vec<f64> = want_acc.iter().zip(&want).map(|(a, w)| a + w).collect();
                        check(
                            &format!("{what} split-K 3, accumulate"),
                            &g.read_f32(&tacc).await.unwrap(),
                            &want2,
                            MATMUL,
                        );
                    }
                }
            }
        }
    }
}

#[path = "reference/attention.rs"]
mod attention_ref;

/// As tests/ops/attention.rs's ATTN_FWD / ATTN_LSE / ATTN_BWD (the reasons are given there).
const ATTN_FWD: Tol = Tol { name: "ATTN_FWD", abs: 1e-6, rel: 4e-6 };
const ATTN_LSE: Tol = Tol { name: "ATTN_LSE", abs: 1e-6, rel: 2e-6 };
const ATTN_BWD: Tol = Tol { name: "ATTN_BWD", abs: 5e-6, rel: 2e-5 };

/// Attention's forward and backward under Tint in both layouts the table picks (64 threads
/// unsplit; 128 threads with the dK/dV split over heads and query chunks and its reduction),
/// at head sizes 8, 80 (tiles that do not divide) and Gemma 3's 256 (7-row tiles), GQA, a
/// sliding window and T past one workgroup, against the f64 reference.
#[wasm_bindgen_test]
async fn attention_layouts_and_head_sizes_match_reference() {
    use attention_ref::{attention, attention_backward, Shape};
    use webtune::ops::attention::{backward_with, choose, forward_with, scratch_len, AttnShape};
    let g = gpu().await;
    let mut rng = Rng::new(3);
    for &(b, t, h, hk, d, window) in
        &[(2usize, 9usize, 4usize, 2usize, 8usize, None), (1, 131, 2, 1, 80, Some(40)), (1, 33, 4, 1, 256, None)]
    {
        let s = AttnShape { b, t, h, hk, d, window, scale: None };
        let rs = Shape { b, t, h, hk, d, window, scale: None };
        let rows = b * t;
        let (qn, kn) = (rows * h * d, rows * hk * d);
        let (q, k, v, dout) = (rng.vec(qn, 2.0), rng.vec(kn, 1.0), rng.vec(kn, 1.0), rng.vec(qn, 1.0));
        let seg = vec![0u32; rows];
        let f = |x: &[f32]| x.iter().map(|&y| y as f64).collect::<Vec<_>>();
        let (o_ref, lse_ref) = attention(&rs, &f(&q), &f(&k), &f(&v), &seg);
        let (dq_ref, dk_ref, dv_ref) = attention_backward(&rs, &f(&q), &f(&k), &f(&v), &seg, &f(&dout));
        let up = |name: &str, x: &[f32]| g.upload_f32(name, x).unwrap();
        let (tq, tk, tv, tdo) = (up("q", &q), up("k", &k), up("v", &v), up("dout", &dout));
        let tseg = g.upload_u32("seg", &seg).unwrap();
        for var in [choose(true), choose(false)] {
            let (to, tlse) = (g.zeros("o", qn).unwrap(), g.zeros("lse", 2 * b * h * t).unwrap());
            let tscr = g.zeros("scratch", scratch_len(rows, h, hk, d)).unwrap();
            let (tdq, tdk, tdv) = (g.zeros("dq", qn).unwrap(), g.zeros("dk", kn).unwrap(), g.zeros("dv", kn).unwrap());
            let mut enc = Encoder::new(&g);
            forward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse);
            backward_with(&mut enc, var, &s, &tq, &tk, &tv, &tseg, &to, &tlse, &tdo, &tscr, &tdq, &tdk, &tdv);
            enc.submit();
            let what = format!("attention {var:?} B {b} T {t} H {h} Hk {hk} D {d} window {window:?}");
            let mut worst = check(&format!("{what} o"), &g.read_f32(&to).await.unwrap(), &o_ref, ATTN_FWD);
            // The lse buffer holds (lse, delta) pairs after the backward.
            let lse: Vec<f32> = g.read_f32(&tlse).await.unwrap().into_iter().step_by(2).collect();
            worst = worst.max(check(&format!("{what} lse"), &lse, &lse_ref, ATTN_LSE));
            for (name, t, want) in [("dq", &tdq, &dq_ref), ("dk", &tdk, &dk_ref), ("dv", &tdv, &dv_ref)] {
                worst = worst.max(check(&format!("{what} {name}"), &g.read_f32(t).await.unwrap(), want, ATTN_BWD));
            }
            console_log!("{what}: worst relative error {worst:.2e}");
        }
    }
}

/// Bias and residual epilogue: C = A . B^T + bias + resid (a Linear layer's forward).
#[wasm_bindgen_test]
async fn matmul_bias_residual_match_reference() {
    let g = gpu().await;
    let mut rng = Rng::new(2);
    let (m, n, k) = (33, 70, 17);
    let a = rng.vec(m * k, 1.0);
    let b = rng.vec(n * k, 1.0); // stored (n, k): op T
    let bias = rng.vec(n, 0.5);
    let resid = rng.vec(m * n, 1.0);
    let mut want = matmul_ref(&logical(&a, Op::N, m, k), &logical(&b, Op::T, k, n), m, n, k);
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] += bias[j] as f64 + resid[i * n + j] as f64;
        }
    }
    let (ta, tb) = (g.upload_f32("a", &a).unwrap(), g.upload_f32("b", &b).unwrap());
    let (tbias, tres) = (g.upload_f32("bias", &bias).unwrap(), g.upload_f32("resid", &resid).unwrap());
    let tc = g.zeros("c", m * n).unwrap();
    let mut enc = Encoder::new(&g);
    matmul(&mut enc, (m, n, k), &ta, Op::N, &tb, Op::T, Some(&tbias), Some(&tres), &tc, false);
    enc.submit();
    check("matmul + bias + resid", &g.read_f32(&tc).await.unwrap(), &want, MATMUL);
}

/// A gated MLP's SwiGLU fused into the matmul epilogue (up projection: act = silu(gate) *
/// up; down projection's input gradient: dgate, dup), on every kernel of the family that
/// holds the shape, against float64 applied to the product the GPU computed (the product
/// itself is the plain matmul, tested above).
#[wasm_bindgen_test]
async fn matmul_swiglu_epilogue_matches_reference() {
    use webtune::ops::matmul::SwigluEpilogue;
    const SWIGLU: Tol = Tol { name: "SWIGLU", abs: 1e-36, rel: 5e-7 };
    let g = gpu().await;
    let mut rng = Rng::new(5);
    let (m, n, k) = (19, 13, 33);
    let (x, w) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0)); // W stored (n, k): op T
    let (gate, up) = (rng.vec(m * n, 3.0), rng.vec(m * n, 1.0));
    let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (tx, tw, tgate, tup) = (t("x", &x), t("w", &w), t("gate", &gate), t("up", &up));
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    for v in [Variant::Large, Variant::Tiled, Variant::Reg, Variant::Dot, Variant::Skinny] {
        let (prod, c, c2) =
            (g.zeros("prod", m * n).unwrap(), g.zeros("c", m * n).unwrap(), g.zeros("c2", m * n).unwrap());
        let mut enc = Encoder::new(&g);
        matmul_variant(&mut enc, v, (m, n, k), 1.0, &tx, Op::N, &tw, Op::T, Extras::default(), &prod, false);
        let fwd = Extras { swiglu: Some(SwigluEpilogue::Forward { gate: &tgate, act: &c2 }), ..Default::default() };
        matmul_variant(&mut enc, v, (m, n, k), 1.0, &tx, Op::N, &tw, Op::T, fwd, &c, false);
        enc.submit();
        let p = g.read_f32(&prod).await.unwrap();
        let act: Vec<f64> = gate.iter().zip(&p).map(|(&gv, &u)| gv as f64 * sig(gv as f64) * u as f64).collect();
        let what = format!("swiglu epilogue {v:?} {m}x{n}x{k}");
        let same = g.read_f32(&c).await.unwrap().iter().zip(&p).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: the forward's C is not the product");
        check(&format!("{what} act"), &g.read_f32(&c2).await.unwrap(), &act, SWIGLU);
        let mut enc = Encoder::new(&g);
        let sw = SwigluEpilogue::Backward { gate: &tgate, up: &tup, dup: &c2 };
        let bwd = Extras { swiglu: Some(sw), ..Default::default() };
        matmul_variant(&mut enc, v, (m, n, k), 1.0, &tx, Op::N, &tw, Op::T, bwd, &c, false);
        enc.submit();
        let (mut dg, mut du) = (Vec::new(), Vec::new());
        for i in 0..m * n {
            let (gv, uv, d) = (gate[i] as f64, up[i] as f64, p[i] as f64);
            let s = sig(gv);
            dg.push(d * uv * s * (1.0 + gv * (1.0 - s)));
            du.push(d * gv * s);
        }
        check(&format!("{what} dgate"), &g.read_f32(&c).await.unwrap(), &dg, SWIGLU);
        check(&format!("{what} dup"), &g.read_f32(&c2).await.unwrap(), &du, SWIGLU);
        console_log!("{what}: ok");
    }
}

/// A LoRA linear's g = dy B and dB += s dy^T u in one dispatch (`ops::lora_grad`), against
/// float64.
#[wasm_bindgen_test]
async fn lora_grad_matches_reference() {
    let g = gpu().await;
    let mut rng = Rng::new(7);
    let (rows, out, r, s) = (21, 37, 3, 1.3f32);
    let (dy, b, u, db0) =
        (rng.vec(rows * out, 1.0), rng.vec(out * r, 1.0), rng.vec(rows * r, 1.0), rng.vec(out * r, 1.0));
    let g_ref = matmul_ref(&logical(&dy, Op::N, rows, out), &logical(&b, Op::N, out, r), rows, r, out);
    let p = matmul_ref(&logical(&dy, Op::T, out, rows), &logical(&u, Op::N, rows, r), out, r, rows);
    let db_ref: Vec<f64> = p.iter().zip(&db0).map(|(v, c)| s as f64 * v + *c as f64).collect();
    let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (tdy, tb, tu, tg, tdb) = (t("dy", &dy), t("b", &b), t("u", &u), g.zeros("g", rows * r).unwrap(), t("db", &db0));
    let mut enc = Encoder::new(&g);
    webtune::ops::lora_grad::backward(&mut enc, (rows, out, r), s, &tdy, &tb, &tu, &tg, &tdb);
    enc.submit();
    check("lora_grad g", &g.read_f32(&tg).await.unwrap(), &g_ref, MATMUL);
    check("lora_grad dB", &g.read_f32(&tdb).await.unwrap(), &db_ref, MATMUL);
}

/// Sibling adapters' u_j = x A_j^T and dA_j += s g_j^T x in one dispatch each
/// (`ops::lora_siblings`), A_j at 64-aligned offsets of one buffer, against float64.
#[wasm_bindgen_test]
async fn lora_siblings_match_reference() {
    use webtune::ops::lora_siblings::{backward, forward, Span};
    let g = gpu().await;
    let mut rng = Rng::new(8);
    let (rows, c, r, s) = (13, 19, 3, 0.7f32);
    let offsets = vec![0usize, 64, 128];
    let (arena, da0, x) = (rng.vec(192, 1.0), rng.vec(192, 1.0), rng.vec(rows * c, 1.0));
    let gs: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(rows * r, 1.0)).collect();
    let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (tx, ta, tda) = (t("x", &x), t("arena", &arena), t("da", &da0));
    let tu: Vec<_> = (0..3).map(|_| g.zeros("u", rows * r).unwrap()).collect();
    let tg: Vec<_> = gs.iter().map(|v| t("g", v)).collect();
    let mut enc = Encoder::new(&g);
    forward(&mut enc, (rows, c, r), &tx, &Span { span: ta, offsets: offsets.clone() }, &tu.iter().collect::<Vec<_>>());
    let dspan = Span { span: tda.clone(), offsets: offsets.clone() };
    backward(&mut enc, (rows, c, r), s, &tx, &tg.iter().collect::<Vec<_>>(), &dspan);
    enc.submit();
    let da = g.read_f32(&tda).await.unwrap();
    for j in 0..3 {
        let a_j = &arena[offsets[j]..offsets[j] + r * c]; // (R, C): op T gives (C, R)
        let u_ref = matmul_ref(&logical(&x, Op::N, rows, c), &logical(a_j, Op::T, c, r), rows, r, c);
        check(&format!("lora_siblings u{j}"), &g.read_f32(&tu[j]).await.unwrap(), &u_ref, MATMUL);
        let p = matmul_ref(&logical(&gs[j], Op::T, r, rows), &logical(&x, Op::N, rows, c), r, c, rows);
        let want: Vec<f64> = p.iter().zip(&da0[offsets[j]..]).map(|(v, c0)| s as f64 * v + *c0 as f64).collect();
        check(&format!("lora_siblings dA{j}"), &da[offsets[j]..offsets[j] + r * c], &want, MATMUL);
    }
}

/// q and k rotated by RoPE in one dispatch, bit for bit as one dispatch each (the
/// single-tensor kernel is held to float64 natively, tests/ops/rope.rs).
#[wasm_bindgen_test]
async fn rope_qk_in_one_dispatch_matches_single() {
    use webtune::ops::rope::{backward, backward_qk, default_inv_freq, forward, forward_qk, RopeTable};
    let g = gpu().await;
    let mut rng = Rng::new(6);
    let (rows, h, hk, d) = (11, 3, 2, 8);
    let table = RopeTable::new(&g, &default_inv_freq(10000.0, d), 64).unwrap();
    let pos: Vec<u32> = (0..rows as u32).map(|r| (r * 5) % 64).collect();
    let tpos = g.upload_u32("pos", &pos).unwrap();
    let (q, k) = (rng.vec(rows * h * d, 1.0), rng.vec(rows * hk * d, 1.0));
    let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
    let (tq, tk, tq1, tk1) = (t("q", &q), t("k", &k), t("q1", &q), t("k1", &k));
    let mut enc = Encoder::new(&g);
    forward_qk(&mut enc, (&tq, h), (&tk, hk), &tpos, &table, rows, d);
    forward(&mut enc, &tq1, &tpos, &table, rows, h, d);
    forward(&mut enc, &tk1, &tpos, &table, rows, hk, d);
    backward_qk(&mut enc, (&tq, h), (&tk, hk), &tpos, &table, rows, d);
    backward(&mut enc, &tq1, &tpos, &table, rows, h, d);
    backward(&mut enc, &tk1, &tpos, &table, rows, hk, d);
    enc.submit();
    for (a, b, name) in [(&tq, &tq1, "q"), (&tk, &tk1, "k")] {
        let (x, y) = (g.read_f32(a).await.unwrap(), g.read_f32(b).await.unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "rope qk: {name} differs");
    }
}

// ---------------------------------------------------------------------------------------
// Model: full training steps of the fixture models in the browser, against the same
// float64 PyTorch/transformers fixture the native tests use (tests/fixtures), so the
// browser and the native engine are held to one truth with the same tolerances.
// ---------------------------------------------------------------------------------------

/// Same bounds as tests/model/parity.rs.
const GRADS: Tol = Tol { name: "GRADS", abs: 1e-7, rel: 2e-5 };
const LOSS: f64 = 2e-6;

struct WasmFixture {
    config: &'static str,
    model: &'static [u8],
    json: serde_json::Value,
    expected: &'static [u8],
}

macro_rules! fixture {
    ($arch:literal) => {
        WasmFixture {
            config: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $arch, "/config.json")),
            model: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $arch, "/model.safetensors")),
            json: serde_json::from_str(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $arch,
                "/fixture.json"
            )))
            .unwrap(),
            expected: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $arch,
                "/expected.safetensors"
            )),
        }
    };
}

impl WasmFixture {
    fn examples(&self) -> Vec<Example> {
        self.json["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let ids = e["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                Example::prompt_answer(ids, e["prompt_len"].as_u64().unwrap() as usize, "fixture")
            })
            .collect()
    }

    fn trainer<'g>(&self, g: &'g Gpu) -> Trainer<'g> {
        let model = webtune::load::model_from_hf_bytes(g, self.config, &[("model.safetensors", self.model)]).unwrap();
        let a = &self.json["adamw"];
        let f = |k: &str| a[k].as_f64().unwrap() as f32;
        let adamw = AdamW {
            lr: f("lr"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
            max_grad_norm: f("max_grad_norm"),
        };
        Trainer::new(g, model, TrainConfig { loss: LossMode::PerExample, micro_batch: 2, adamw, ..Default::default() })
            .unwrap()
    }

    fn expected(&self, name: &str) -> Vec<f64> {
        let st = safetensors::SafeTensors::deserialize(self.expected).unwrap();
        let v = st.tensor(name).unwrap();
        v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
    }
}

async fn training_steps_match_fixture(fx: WasmFixture, arch: &str) {
    let g = gpu().await;
    let ex = fx.examples();
    let mut t = fx.trainer(&g);
    // The gradient of the first step, every parameter.
    t.accumulate(&ex).await.unwrap();
    let grads = t.read_grads().await.unwrap();
    let mut worst = 0f64;
    for (name, _, got) in &grads {
        worst = worst.max(check(
            &format!("{arch} grad {name}"),
            got,
            &fx.expected(&format!("grad.per-example.{name}")),
            GRADS,
        ));
    }
    console_log!("{arch}: {} gradients in the browser, worst relative error {worst:.2e}", grads.len());
    // Three AdamW steps: the loss before each.
    let want: Vec<f64> = fx.json["step_losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    for (s, w) in want.iter().take(3).enumerate() {
        // A validation error on WebGPU drops the dispatch silently: surface it.
        let scope = g.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let got = t.step(&ex).await.unwrap().loss;
        if let Some(e) = scope.pop().await {
            panic!("{arch} step {s}: WebGPU validation error: {e}");
        }
        console_log!("{arch} step {s}: loss {got:.7} vs transformers {w:.7}");
        assert!((got - w).abs() <= 1e1 * LOSS * w.abs().max(1.0), "{arch} step {s}: {got} vs {w}");
    }
}

#[wasm_bindgen_test]
async fn llama_training_steps_match_transformers() {
    training_steps_match_fixture(fixture!("llama"), "llama").await;
}

#[wasm_bindgen_test]
async fn gpt2_training_steps_match_transformers() {
    training_steps_match_fixture(fixture!("gpt2"), "gpt2").await;
}

/// Qwen3's per-head q/k norms run the RMSNorm kernel over rows of D: the same check on
/// WebGPU (Chromium's WGSL compiler and SwiftShader).
#[wasm_bindgen_test]
async fn qwen3_training_steps_match_transformers() {
    training_steps_match_fixture(fixture!("qwen3"), "qwen3").await;
}

/// Gemma 3 (the soft-cap kernel, (1 + w) norms, post-norms, GeGLU, a sliding-window layer):
/// the same check on WebGPU.
#[wasm_bindgen_test]
async fn gemma3_training_steps_match_transformers() {
    training_steps_match_fixture(fixture!("gemma3"), "gemma3").await;
}

/// LoRA over a compact base (Q8_0 tied embedding and head, Q4_1 attention as in the default
/// GGUF, Q4_0, F16 and BF16 MLP) trains in the browser as over its f32 expansion: the
/// losses of 5 AdamW steps and then every adapter gradient bit for bit (the same fma order
/// in both; tests/model/compact.rs holds the native twin). SwiftShader has no shader-f16,
/// so this is the WGSL-core dequantization inside the kernels, under Tint.
#[wasm_bindgen_test]
async fn lora_over_a_compact_base_trains_as_over_its_f32_expansion() {
    use webtune::load::compact::{CompactFormat, CompactTensor};
    use webtune::model::params::{ParamInit, ParamSpec};
    use webtune::model::{presets::preset, LoraConfig, Model};
    let g = gpu().await;
    let lora = LoraConfig { dropout: 0.1, seed: 3, ..LoraConfig::new(4, 8.0, &["all-linear"]) };
    let format = |s: &ParamSpec| -> Option<CompactFormat> {
        use CompactFormat::*;
        if !s.may_be_compact() {
            return None;
        }
        Some(match () {
            _ if s.name.contains("embed_tokens") => Q8_0,
            _ if s.name.contains("self_attn") => Q4_1,
            _ if s.name.contains("gate_proj") => F16,
            _ if s.name.contains("up_proj") => BF16,
            _ => Q4_0,
        })
    };
    let values = |s: &ParamSpec| {
        let seed = s.name.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
        let mut rng = Rng::new(seed);
        if s.shape.len() == 2 {
            rng.vec(s.numel(), 0.05)
        } else {
            vec![1.0; s.numel()]
        }
    };
    // Quantized values where there is a quantizer; Q4_1 (none) as random blocks with
    // d = 2^-10 and m = -2^-7 (values in [-0.008, 0.007], the others' scale).
    let quantized = |s: &ParamSpec, f: CompactFormat| {
        let (rows, cols) = (s.shape[0], s.shape[1]);
        if f != CompactFormat::Q4_1 {
            return CompactTensor::quantize(&s.name, f, rows, cols, &values(s)).unwrap();
        }
        let mut rng = Rng::new(s.numel() as u64);
        let bb = f.gguf_block_bytes();
        let mut bytes: Vec<u8> = (0..rows * cols / f.block_values() * bb).map(|_| rng.below(256) as u8).collect();
        for b in bytes.chunks_exact_mut(bb) {
            b[0..2].copy_from_slice(&0x1400u16.to_le_bytes());
            b[2..4].copy_from_slice(&0xA000u16.to_le_bytes());
        }
        CompactTensor::from_gguf(&s.name, f, rows, cols, &bytes).unwrap()
    };
    // tiny-llama: C 128, ffn 352, V 2048, tied; every row a whole number of 32-value blocks.
    let cfg = preset("tiny-llama").unwrap();
    let compact = Model::build_compact(&g, cfg.clone(), Some(&lora), format, |s| {
        Ok(match format(s) {
            Some(f) => ParamInit::Compact(quantized(s, f)),
            None => ParamInit::F32(values(s)),
        })
    })
    .unwrap();
    assert!(compact.params.compact_bytes() > 0, "nothing was kept compact");
    let expanded = Model::build(&g, cfg, Some(&lora), |s| {
        Ok(match format(s) {
            Some(f) => quantized(s, f).dequantize(),
            None => values(s),
        })
    })
    .unwrap();
    let mut rng = Rng::new(11);
    let examples: Vec<Example> = (0..4)
        .map(|i| {
            let len = 9 + 5 * i;
            let ids = (0..len).map(|_| (rng.next_u64() % 2048) as u32).collect();
            Example::prompt_answer(ids, len / 2, "example")
        })
        .collect();
    let compact = train_bits(&g, "tiny-llama over the compact base", compact, &examples, 4).await;
    let expanded = train_bits(&g, "tiny-llama over the f32 base", expanded, &examples, 4).await;
    assert_same_training("tiny-llama over the compact base", &compact, &expanded);
}

/// Each loss of a training run and every trainable gradient after it.
type RunBits = (Vec<f64>, Vec<(String, Vec<usize>, Vec<f32>)>);

/// 5 AdamW steps on `examples` in micro-batches of `micro_batch` with activation
/// checkpointing, then one more accumulation: the losses and the gradients after it, with
/// no WebGPU validation error (tests/common's `train_bits`, which blocks on futures).
async fn train_bits(
    g: &Gpu,
    what: &str,
    model: webtune::model::Model,
    examples: &[Example],
    micro_batch: usize,
) -> RunBits {
    let scope = g.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut t = Trainer::new(g, model, TrainConfig { micro_batch, recompute: true, ..Default::default() }).unwrap();
    let mut losses = Vec::new();
    for _ in 0..5 {
        losses.push(t.step(examples).await.unwrap().loss);
    }
    t.accumulate(examples).await.unwrap();
    let grads = t.read_grads().await.unwrap();
    if let Some(e) = scope.pop().await {
        panic!("{what}: WebGPU validation error: {e}");
    }
    console_log!("{what} in the browser: losses {losses:?}");
    (losses, grads)
}

/// Two runs' losses and gradients are equal bit for bit, the loss falls, and no gradient
/// is all zero (that would prove nothing).
fn assert_same_training(what: &str, (loss_a, grads_a): &RunBits, (loss_b, grads_b): &RunBits) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let loss_bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(loss_bits(loss_a), loss_bits(loss_b), "{what}: the losses differ");
    assert!(loss_a.iter().all(|l| l.is_finite()) && loss_a[4] < loss_a[0], "{what}: the loss falls: {loss_a:?}");
    assert_eq!(grads_a.len(), grads_b.len());
    for ((name, _, a), (_, _, b)) in grads_a.iter().zip(grads_b) {
        assert_eq!(bits(a), bits(b), "{what}: {name} not bit-identical");
        assert!(a.iter().any(|&x| x != 0.0), "{what}: {name} is all zero, which proves nothing");
    }
    console_log!("{what}: {} trainable gradients bit-identical", grads_a.len());
}

/// The default model (SmolLM2-135M-Instruct, Q4_1 attention and MLP, Q8_0 tied embedding
/// and head) trained with LoRA in the browser over its own GGUF blocks and over their f32
/// expansion (`Base::F32`): the losses of 5 AdamW steps and then every adapter gradient,
/// bit for bit, as natively in tests/gguf/smollm2.rs (same examples, same settings). The
/// file comes from models/ (scripts/fetch-model.sh) through the test runner's server, which
/// serves the crate root; a CI build (`CI` set when compiled) fails without it.
#[wasm_bindgen_test]
async fn smollm2_lora_over_its_compact_base_trains_as_over_f32() {
    use webtune::load::base::Base;
    use webtune::load::model_from_gguf_bytes_base;
    use webtune::model::LoraConfig;
    const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let Some(bytes) = fetch_bytes(&format!("/models/{SMOLLM2}")).await else {
        assert!(option_env!("CI").is_none(), "models/{SMOLLM2} is missing and CI is set: run scripts/fetch-model.sh");
        console_log!("SKIPPED: models/{SMOLLM2} is missing (run scripts/fetch-model.sh)");
        return;
    };
    let g = gpu().await;
    let lora = LoraConfig { dropout: 0.05, seed: 9, ..LoraConfig::new(4, 8.0, &["all-linear"]) };
    let tok = |i: u32| (i * 7919 + 13) % 49152;
    let examples: Vec<Example> =
        (0..3).map(|e| Example::prompt_answer((0..6 + 2 * e).map(|i| tok(i + 100 * e)).collect(), 3, "ex")).collect();
    let mut runs = Vec::new();
    // One model at a time: the f32 expansion alone is 540 MB of the tab's memory.
    for (what, base) in [("SmolLM2 over its compact base", Base::Auto), ("SmolLM2 over f32", Base::F32)] {
        let (model, _) = model_from_gguf_bytes_base(&g, SMOLLM2, &bytes, Some(&lora), base).unwrap();
        let formats: std::collections::BTreeSet<&str> =
            (0..model.params.specs.len()).filter_map(|p| model.params.compact(p).map(|c| c.format.name())).collect();
        let want: &[&str] = if base == Base::F32 { &[] } else { &["Q4_1", "Q8_0"] };
        assert_eq!(formats.into_iter().collect::<Vec<_>>(), want, "{what}: the formats on the GPU");
        runs.push(train_bits(&g, what, model, &examples, 3).await);
    }
    assert_same_training("SmolLM2 over its compact base", &runs[0], &runs[1]);
}

/// The bytes at `url` (same origin), or None for a 404; any other failure panics.
async fn fetch_bytes(url: &str) -> Option<Vec<u8>> {
    let global = js_sys::global();
    let fetch: js_sys::Function = js_sys::Reflect::get(&global, &"fetch".into()).unwrap().unchecked_into();
    let reply = JsFuture::from(js_sys::Promise::from(fetch.call1(&global, &url.into()).unwrap())).await.unwrap();
    let status = js_sys::Reflect::get(&reply, &"status".into()).unwrap().as_f64().unwrap();
    if status == 404.0 {
        return None;
    }
    assert_eq!(status, 200.0, "GET {url}: HTTP {status}");
    let read: js_sys::Function = js_sys::Reflect::get(&reply, &"arrayBuffer".into()).unwrap().unchecked_into();
    let buf = JsFuture::from(js_sys::Promise::from(read.call0(&reply).unwrap())).await.unwrap();
    Some(js_sys::Uint8Array::new(&buf).to_vec())
}

// ---------------------------------------------------------------------------------------
// Generation: greedy decoding with the KV cache in the browser against the argmax chain of
// full forwards computed in the same test (the native tests/generate.rs holds the same
// chain against transformers' logits, so both engines meet one truth).
// ---------------------------------------------------------------------------------------

/// The logits (V) of the last position of `ids` from a full forward (Head::Logits).
async fn last_logits(g: &Gpu, model: &webtune::model::Model, ids: &[u32]) -> Vec<f32> {
    use webtune::model::{Head, Inputs};
    let (t, v) = (ids.len(), model.cfg.vocab);
    let pos: Vec<u32> = (0..t as u32).collect();
    let last = [t as u32 - 1];
    let ws = model.workspace(g, t, 1).unwrap();
    let inp = Inputs {
        b: 1,
        t,
        n: 1,
        ids: g.upload_u32("ids", ids).unwrap(),
        pos: g.upload_u32("pos", &pos).unwrap(),
        seg: g.zeros("seg", t).unwrap(),
        loss_rows: g.upload_u32("rows", &last).unwrap(),
        targets: g.zeros("targets", 1).unwrap(),
        weights: g.zeros("weights", 1).unwrap(),
        by_id: None,
        by_pos: None,
        dropout_salt: None,
    };
    let mut enc = Encoder::new(g);
    model.forward(&mut enc, &ws, &inp, Head::Logits);
    enc.submit();
    drop(enc);
    g.read_f32(&ws.logits.view(0, v)).await.unwrap()
}

#[wasm_bindgen_test]
async fn llama_greedy_generation_matches_full_forwards() {
    use webtune::model::generate::argmax;
    use webtune::model::{generate, GenerateConfig, StopReason};
    let g = gpu().await;
    let fx = fixture!("llama");
    let model = webtune::load::model_from_hf_bytes(&g, fx.config, &[("model.safetensors", fx.model)]).unwrap();
    let prompt = fx.examples()[0].ids.clone();
    let n = 6;
    let mut seq = prompt.clone();
    for _ in 0..n {
        let l = last_logits(&g, &model, &seq).await;
        seq.push(argmax(&l));
    }
    let want = &seq[prompt.len()..];
    let scope = g.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut streamed = Vec::new();
    let cfg = GenerateConfig { max_new_tokens: n, ..Default::default() };
    let out = generate(&g, &model, &prompt, &cfg, |t| {
        streamed.push(t);
        true
    })
    .await
    .unwrap();
    if let Some(e) = scope.pop().await {
        panic!("generation: WebGPU validation error: {e}");
    }
    console_log!("llama greedy in the browser: {:?} (full forwards: {want:?})", out.tokens);
    assert_eq!(out.tokens, want, "greedy tokens with the KV cache vs the argmax chain of full forwards");
    assert_eq!(out.tokens, streamed);
    assert_eq!(out.stop, StopReason::MaxTokens);
}
