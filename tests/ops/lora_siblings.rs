use webtune::gpu::Encoder;
use webtune::ops::lora_siblings::{backward, forward, Span};
use webtune::ops::matmul::{matmul_variant, Extras, Op, Variant};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::matmul::{linear, transpose};

/// f32 sums of K products with random signs (K = C forward, rows backward): the matmul
/// tests' bound.
const MATMUL: Tol = Tol { name: "MATMUL", abs: 1e-6, rel: 2e-6 };

/// One to three sibling adapters' u_j = x A_j^T and dA_j += s g_j^T x in one dispatch,
/// their A_j at scattered offsets of one buffer (a parameter arena: 64-element aligned,
/// with gaps), on awkward shapes: against float64, and bit for bit the `matmul_dot`
/// products they replace on CPU adapters.
#[test]
fn lora_siblings_match_reference_and_dot_bits() {
    let g = gpu();
    let mut rng = Rng::new(61);
    for &(rows, c, r, n) in
        &[(1usize, 1usize, 1usize, 1usize), (37, 65, 3, 3), (70, 129, 8, 2), (129, 576, 16, 3), (5, 7, 2, 3)]
    {
        // A_j (R, C) at offsets rounded up to 64 elements, plus a gap.
        let mut offsets = Vec::new();
        let mut at = 0;
        for _ in 0..n {
            offsets.push(at);
            at = (at + r * c).div_ceil(64) * 64 + 64;
        }
        let arena = rng.vec(at, 1.0);
        let da0 = rng.vec(at, 1.0);
        let x = rng.vec(rows * c, 1.0);
        let gs: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(rows * r, 1.0)).collect();
        let s = 0.6f32;
        let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
        let (tx, ta, tda) = (t("x", &x), t("arena", &arena), t("da", &da0));
        let tu: Vec<_> = (0..n).map(|_| t("u", &vec![f32::NAN; rows * r])).collect();
        let tg: Vec<_> = gs.iter().map(|v| t("g", v)).collect();
        let span = Span { span: ta.clone(), offsets: offsets.clone() };
        let dspan = Span { span: tda.clone(), offsets: offsets.clone() };
        let mut enc = Encoder::new(g);
        forward(&mut enc, (rows, c, r), &tx, &span, &tu.iter().collect::<Vec<_>>());
        backward(&mut enc, (rows, c, r), s, &tx, &tg.iter().collect::<Vec<_>>(), &dspan);
        // The products one by one with matmul_dot, for the bits.
        let ex = Extras::default();
        let (tu2, tda2): (Vec<_>, _) = ((0..n).map(|_| t("u2", &vec![f32::NAN; rows * r])).collect(), t("da2", &da0));
        for j in 0..n {
            let a_j = ta.view(offsets[j], r * c);
            matmul_variant(&mut enc, Variant::Dot, (rows, r, c), 1.0, &tx, Op::N, &a_j, Op::T, ex, &tu2[j], false);
            let da_j = tda2.view(offsets[j], r * c);
            matmul_variant(&mut enc, Variant::Dot, (r, c, rows), s, &tg[j], Op::T, &tx, Op::N, ex, &da_j, true);
        }
        enc.submit();
        let read = |x| block(g.read_f32(x)).unwrap();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        let (da_got, da_dot) = (read(&tda), read(&tda2));
        let what = format!("lora_siblings rows {rows} C {c} R {r} x{n}");
        for j in 0..n {
            let a_j = f64s(&arena[offsets[j]..offsets[j] + r * c]);
            let u_ref = linear(&f64s(&x), &a_j, None, rows, c, r);
            let u_got = read(&tu[j]);
            check(&format!("{what} u{j}"), &u_got, &u_ref, MATMUL);
            assert!(same(&u_got, &read(&tu2[j])), "{what}: u{j} differs from matmul_dot's");
            // dA_j = s g_j^T (R, rows) . x (rows, C) + dA0_j: W (C, rows) = x^T.
            let p = linear(&transpose(&f64s(&gs[j]), rows, r), &transpose(&f64s(&x), rows, c), None, r, rows, c);
            let d0 = &da0[offsets[j]..offsets[j] + r * c];
            let da_ref: Vec<f64> = p.iter().zip(d0).map(|(v, c0)| s as f64 * v + *c0 as f64).collect();
            let got = &da_got[offsets[j]..offsets[j] + r * c];
            check(&format!("{what} dA{j}"), got, &da_ref, MATMUL);
        }
        // Everything, gaps included, as the one-by-one products leave it.
        assert!(same(&da_got, &da_dot), "{what}: dA differs from matmul_dot's (or a gap was written)");
    }
}
