use webtune::gpu::Encoder;
use webtune::ops::lora_grad::backward;
use webtune::ops::matmul::{matmul_variant, Extras, Op, Variant};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::matmul::{linear, transpose};

/// f32 sums of K products with random signs (K = out for g, rows for dB): the matmul
/// tests' bound, which covers K up to a few thousand.
const MATMUL: Tol = Tol { name: "MATMUL", abs: 1e-6, rel: 2e-6 };

/// g = dy B and dB += s dy^T u in one dispatch, on awkward shapes (1, primes, tile edges,
/// ranks 1 to 16): against float64, and bit for bit the two `matmul_dot` products it
/// replaces on CPU adapters.
#[test]
fn lora_grad_matches_reference_and_dot_bits() {
    let g = gpu();
    let mut rng = Rng::new(51);
    for &(rows, out, r) in &[(1usize, 1usize, 1usize), (37, 65, 3), (70, 129, 8), (129, 576, 16), (5, 300, 2)] {
        let (dy, b, u, db0) =
            (rng.vec(rows * out, 1.0), rng.vec(out * r, 1.0), rng.vec(rows * r, 1.0), rng.vec(out * r, 1.0));
        let s = 1.7f32;
        // g = dy (rows, out) . B (out, R): linear() takes W (R, out) = B^T.
        let g_ref = linear(&f64s(&dy), &transpose(&f64s(&b), out, r), None, rows, out, r);
        // dB = s dy^T (out, rows) . u (rows, R) + dB0: W (R, rows) = u^T.
        let dyt = transpose(&f64s(&dy), rows, out);
        let p = linear(&dyt, &transpose(&f64s(&u), rows, r), None, out, rows, r);
        let db_ref: Vec<f64> = p.iter().zip(&db0).map(|(v, c)| s as f64 * v + *c as f64).collect();
        let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
        let (tdy, tb, tu) = (t("dy", &dy), t("b", &b), t("u", &u));
        let (tg, tdb) = (t("g", &vec![f32::NAN; rows * r]), t("db", &db0));
        let (tg2, tdb2) = (t("g2", &vec![f32::NAN; rows * r]), t("db2", &db0));
        let mut enc = Encoder::new(g);
        backward(&mut enc, (rows, out, r), s, &tdy, &tb, &tu, &tg, &tdb);
        let ex = Extras::default();
        matmul_variant(&mut enc, Variant::Dot, (rows, r, out), 1.0, &tdy, Op::N, &tb, Op::N, ex, &tg2, false);
        matmul_variant(&mut enc, Variant::Dot, (out, r, rows), s, &tdy, Op::T, &tu, Op::N, ex, &tdb2, true);
        enc.submit();
        let what = format!("lora_grad rows {rows} out {out} r {r}");
        let read = |x| block(g.read_f32(x)).unwrap();
        let (gg, dbg) = (read(&tg), read(&tdb));
        let eg = check(&format!("{what} g"), &gg, &g_ref, MATMUL);
        let eb = check(&format!("{what} dB"), &dbg, &db_ref, MATMUL);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&gg, &read(&tg2)), "{what}: g differs from matmul_dot's");
        assert!(same(&dbg, &read(&tdb2)), "{what}: dB differs from matmul_dot's");
        eprintln!("{what}: worst rel g {eg:.2e} dB {eb:.2e}");
    }
}
