use webtune::gpu::Encoder;
use webtune::ops::swiglu::{backward, forward};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::swiglu::{swiglu, swiglu_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// A few roundings and one exp per element (worst seen 2e-7 of the output scale); abs
/// allows denormal results to be flushed to zero, as WGSL permits.
pub const SWIGLU: Tol = Tol { name: "SWIGLU", abs: 1e-36, rel: 5e-7 };
/// Single saturated elements held to their own scale, where the value is exp(-|g|) itself:
/// Vulkan lets exp err by 3 + 2|g| ulp (~7e-6 at |g| = 30; 1.2e-6 seen), and denormals
/// may flush to zero.
const SWIGLU_TAIL: Tol = Tol { name: "SWIGLU_TAIL", abs: 1e-36, rel: 1e-5 };

const SIZES: &[usize] = &[1, 3, 7, 129, 576, 1000, 33 * 1000 + 5];

fn run(gate: &[f32], up: &[f32], dout: &[f32], tol: Tol, what: &str) {
    let g = gpu();
    let n = gate.len();
    let (tg, tu, td) =
        (g.upload_f32("gate", gate).unwrap(), g.upload_f32("up", up).unwrap(), g.upload_f32("dout", dout).unwrap());
    let out = g.zeros("out", n).unwrap();
    // Both gradients are overwritten: start them at garbage.
    let dgate = g.upload_f32("dgate", &vec![f32::NAN; n]).unwrap();
    let dup = g.upload_f32("dup", &vec![f32::NAN; n]).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &tg, &tu, &out, n);
    backward(&mut enc, &tg, &tu, &td, &dgate, &dup, n);
    enc.submit();
    let (gd, ud, dd) = (f64s(gate), f64s(up), f64s(dout));
    let (dg_ref, du_ref) = swiglu_backward(&gd, &ud, &dd);
    let eo = check(&format!("{what} out"), &block(g.read_f32(&out)).unwrap(), &swiglu(&gd, &ud), tol);
    let eg = check(&format!("{what} dgate"), &block(g.read_f32(&dgate)).unwrap(), &dg_ref, tol);
    let eu = check(&format!("{what} dup"), &block(g.read_f32(&dup)).unwrap(), &du_ref, tol);
    eprintln!("{what}: worst rel out {eo:.2e} dgate {eg:.2e} dup {eu:.2e}");
}

#[test]
fn swiglu_matches_reference() {
    let mut rng = Rng::new(41);
    for &n in SIZES {
        let (gate, up, dout) = (rng.vec(n, 3.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        run(&gate, &up, &dout, SWIGLU, &format!("swiglu n={n}"));
    }
}

// Saturated gates, where exp overflows if taken of a positive argument and 1 - sigmoid
// cancels: checked one element at a time so each is held to its own scale.
#[test]
fn swiglu_saturated_gates_stay_finite_and_accurate() {
    for gv in [-1e30f32, -1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4, 1e30] {
        run(&[gv], &[0.7], &[1.3], SWIGLU_TAIL, &format!("swiglu gate={gv}"));
    }
}

#[test]
fn reference_swiglu_backward_matches_finite_differences() {
    let mut rng = Rng::new(42);
    let n = 9;
    let gate = f64s(&rng.vec(n, 3.0));
    let up = f64s(&rng.vec(n, 1.0));
    let proj = f64s(&rng.vec(n, 1.0));
    let (dg, du) = swiglu_backward(&gate, &up, &proj);
    let h = 1e-5;
    assert_grad("swiglu dgate", &dg, &numeric_grad(&gate, h, |g| dot(&proj, &swiglu(g, &up))));
    assert_grad("swiglu dup", &du, &numeric_grad(&up, h, |u| dot(&proj, &swiglu(&gate, u))));
}

/// SwiGLU fused into a product's epilogue (`Extras::swiglu`), on every kernel that can
/// compute the shape, with a LoRA epilogue before it as in the model:
/// forward (an up projection): C = x W^T + s u B^T = up and act = silu(gate) * up;
/// backward (a down projection's input gradient): the product is dact, C = dgate and
/// dup = dact * silu(gate). The product is held to float64 (MATMUL), the SwiGLU outputs
/// to float64 applied to that product (SWIGLU), and both must equal the unfused
/// product + `ops::swiglu` pass bit for bit (the model's results do not change).
#[test]
fn swiglu_in_matmul_epilogue_matches_reference_and_unfused_bits() {
    use webtune::ops::matmul::{matmul_variant, vec4_fits, Extras, LoraEpilogue, Op, SwigluEpilogue, Variant};
    const MATMUL: Tol = Tol { name: "MATMUL", abs: 1e-6, rel: 2e-6 };
    let g = gpu();
    let mut rng = Rng::new(43);
    // Awkward shapes: odd sizes, tile edges, the skinny kernel's N <= 16 and M <= 4.
    for &(m, n, k, r) in
        &[(70, 33, 129, 8), (5, 130, 20, 3), (129, 65, 33, 16), (3, 16, 64, 1), (37, 7, 300, 2), (70, 33, 36, 4)]
    {
        let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
        let (x, w) = (rng.vec(m * k, 1.0), rng.vec(n * k, 1.0)); // W stored (N, K): x W^T
        let (u, lb) = (rng.vec(m * r, 1.0), rng.vec(n * r, 1.0));
        let (gate, up) = (rng.vec(m * n, 3.0), rng.vec(m * n, 1.0));
        let s = 0.8f32;
        let xw = crate::reference::matmul::linear(&f64s(&x), &f64s(&w), None, m, k, n);
        let ul = crate::reference::matmul::linear(&f64s(&u), &f64s(&lb), None, m, r, n);
        let prod_ref: Vec<f64> = xw.iter().zip(&ul).map(|(a, b)| a + s as f64 * b).collect();
        let (tx, tw, tu, tlb, tgate, tup) =
            (t("x", &x), t("w", &w), t("u", &u), t("lb", &lb), t("gate", &gate), t("up", &up));
        let mut variants = vec![Variant::Large, Variant::Tiled, Variant::Reg, Variant::Dot];
        if n <= 16 {
            variants.push(Variant::Skinny);
        }
        if vec4_fits((m, n, k), (Op::N, Op::T)) {
            variants.push(Variant::Reg4);
        }
        for v in variants {
            let what = format!("swiglu epilogue {v:?} {m}x{n}x{k} r{r}");
            let lora = LoraEpilogue { u: &tu, b: &tlb, b_t: false, rank: r, scale: s };
            let plain = Extras { lora: Some(lora), ..Default::default() };
            let nan = vec![f32::NAN; m * n];
            let (prod, c, c2, unf, unf2) =
                (t("prod", &nan), t("c", &nan), t("c2", &nan), t("unf", &nan), t("unf2", &nan));
            let mm = |enc: &mut Encoder, ex: Extras, out| {
                matmul_variant(enc, v, (m, n, k), 1.0, &tx, Op::N, &tw, Op::T, ex, out, false)
            };
            // Forward: C = up (the product), c2 = act.
            let mut enc = Encoder::new(g);
            mm(&mut enc, plain, &prod);
            mm(&mut enc, Extras { swiglu: Some(SwigluEpilogue::Forward { gate: &tgate, act: &c2 }), ..plain }, &c);
            forward(&mut enc, &tgate, &prod, &unf, m * n);
            enc.submit();
            let prod_got = block(g.read_f32(&prod)).unwrap();
            check(&format!("{what} product"), &prod_got, &prod_ref, MATMUL);
            let (c_got, act_got) = (block(g.read_f32(&c)).unwrap(), block(g.read_f32(&c2)).unwrap());
            check(&format!("{what} forward act"), &act_got, &swiglu(&f64s(&gate), &f64s(&prod_got)), SWIGLU);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(&c_got, &prod_got), "{what}: the forward's C is not the plain product's bits");
            assert!(same(&act_got, &block(g.read_f32(&unf)).unwrap()), "{what}: fused act differs from swiglu_forward");
            // Backward: the product is dact; C = dgate, c2 = dup.
            let mut enc = Encoder::new(g);
            let sw = SwigluEpilogue::Backward { gate: &tgate, up: &tup, dup: &c2 };
            mm(&mut enc, Extras { swiglu: Some(sw), ..plain }, &c);
            backward(&mut enc, &tgate, &tup, &prod, &unf, &unf2, m * n);
            enc.submit();
            let (dg_ref, du_ref) = swiglu_backward(&f64s(&gate), &f64s(&up), &f64s(&prod_got));
            let (dg, du) = (block(g.read_f32(&c)).unwrap(), block(g.read_f32(&c2)).unwrap());
            check(&format!("{what} backward dgate"), &dg, &dg_ref, SWIGLU);
            check(&format!("{what} backward dup"), &du, &du_ref, SWIGLU);
            assert!(same(&dg, &block(g.read_f32(&unf)).unwrap()), "{what}: fused dgate differs from swiglu_backward");
            assert!(same(&du, &block(g.read_f32(&unf2)).unwrap()), "{what}: fused dup differs from swiglu_backward");
        }
    }
}
