use webtune::gpu::Encoder;
use webtune::ops::rope::{backward, default_inv_freq, forward, RopeTable};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::rope::{rope, rope_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// Each output is x*cos - y*sin with cos/sin rounded to f32 and two f32 products and a
/// sum: a few ulp of max|x|. 1e-6 relative fails any wrong angle, position or pairing.
const ROPE: Tol = Tol { name: "ROPE", abs: 1e-7, rel: 1e-6 };

/// Positions of packed sequences: each segment restarts at 0, and one row carries a large
/// offset so that table lookups far from the origin are exercised.
fn packed_positions(rng: &mut Rng, rows: usize, max_pos: usize) -> Vec<u32> {
    let mut pos = Vec::with_capacity(rows);
    let mut p = 0;
    for r in 0..rows {
        if rng.below(6) == 0 {
            p = 0;
        }
        pos.push(if r == rows / 2 { (max_pos - 1) as u32 } else { p });
        p += 1;
    }
    pos
}

#[test]
fn default_inv_freq_matches_hf_formula() {
    for (theta, d) in [(10000.0f32, 64usize), (100000.0, 128), (500000.0, 8)] {
        let f = default_inv_freq(theta, d);
        assert_eq!(f.len(), d / 2);
        for (i, &x) in f.iter().enumerate() {
            let want = 1.0 / (theta as f64).powf((2 * i) as f64 / d as f64);
            // torch computes the exponent, the power and the reciprocal each in f32.
            assert!((x as f64 - want).abs() <= 4e-7 * want, "inv_freq[{i}] theta {theta} d {d}: {x} vs {want}");
        }
    }
}

#[test]
fn rope_forward_backward_match_reference() {
    let g = gpu();
    let mut rng = Rng::new(11);
    let max_pos = 4096;
    let mut worst: f64 = 0.0;
    for theta in [10000.0f32, 100000.0] {
        for d in [2usize, 8, 24, 64] {
            for (rows, heads) in [(1usize, 1usize), (37, 3), (70, 2)] {
                let inv = default_inv_freq(theta, d);
                let table = RopeTable::new(g, &inv, max_pos).unwrap();
                let pos = packed_positions(&mut rng, rows, max_pos);
                let x = rng.vec(rows * heads * d, 1.0);
                let dy = rng.vec(rows * heads * d, 1.0);
                let y_ref = rope(&f64s(&x), &pos, &inv, rows, heads, d);
                let dx_ref = rope_backward(&f64s(&dy), &pos, &inv, rows, heads, d);

                let tx = g.upload_f32("x", &x).unwrap();
                let tdy = g.upload_f32("dy", &dy).unwrap();
                let tpos = g.upload_u32("pos", &pos).unwrap();
                let mut enc = Encoder::new(g);
                forward(&mut enc, &tx, &tpos, &table, rows, heads, d);
                backward(&mut enc, &tdy, &tpos, &table, rows, heads, d);
                enc.submit();
                let what = format!("rope theta {theta} D {d} rows {rows} heads {heads}");
                worst = worst.max(check(&format!("{what} y"), &block(g.read_f32(&tx)).unwrap(), &y_ref, ROPE));
                worst = worst.max(check(&format!("{what} dx"), &block(g.read_f32(&tdy)).unwrap(), &dx_ref, ROPE));
            }
        }
    }
    eprintln!("rope: worst error {worst:.2e} x max|want| ({})", ROPE.name);
}

#[test]
fn reference_rope_backward_matches_finite_differences() {
    let mut rng = Rng::new(12);
    let (rows, heads, d) = (3, 2, 6);
    let inv = default_inv_freq(10000.0, d);
    let pos = [0u32, 5, 1234];
    let x = f64s(&rng.vec(rows * heads * d, 1.0));
    let proj = f64s(&rng.vec(rows * heads * d, 1.0));
    let dx = rope_backward(&proj, &pos, &inv, rows, heads, d);
    let num = numeric_grad(&x, 1e-5, |x| dot(&proj, &rope(x, &pos, &inv, rows, heads, d)));
    assert_grad("rope dx", &dx, &num);
}

/// q and k rotated in one dispatch (`forward_qk` / `backward_qk`, a block's two tensors
/// at the same positions, different head counts): against float64, and bit for bit what
/// one dispatch per tensor gives.
#[test]
fn rope_qk_in_one_dispatch_matches_reference_and_single_bits() {
    use webtune::ops::rope::{backward_qk, forward_qk};
    let g = gpu();
    let mut rng = Rng::new(13);
    let max_pos = 4096;
    for d in [2usize, 24, 64] {
        for (rows, h, hk) in [(1usize, 1usize, 1usize), (37, 3, 1), (70, 9, 3), (5, 2, 4)] {
            let inv = default_inv_freq(10000.0, d);
            let table = RopeTable::new(g, &inv, max_pos).unwrap();
            let pos = packed_positions(&mut rng, rows, max_pos);
            let tpos = g.upload_u32("pos", &pos).unwrap();
            let (q, k) = (rng.vec(rows * h * d, 1.0), rng.vec(rows * hk * d, 1.0));
            let up = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
            let (tq, tk, tq1, tk1) = (up("q", &q), up("k", &k), up("q1", &q), up("k1", &k));
            let (dq, dk) = (up("dq", &q), up("dk", &k));
            let (dq1, dk1) = (up("dq1", &q), up("dk1", &k));
            let mut enc = Encoder::new(g);
            forward_qk(&mut enc, (&tq, h), (&tk, hk), &tpos, &table, rows, d);
            forward(&mut enc, &tq1, &tpos, &table, rows, h, d);
            forward(&mut enc, &tk1, &tpos, &table, rows, hk, d);
            backward_qk(&mut enc, (&dq, h), (&dk, hk), &tpos, &table, rows, d);
            backward(&mut enc, &dq1, &tpos, &table, rows, h, d);
            backward(&mut enc, &dk1, &tpos, &table, rows, hk, d);
            enc.submit();
            let what = format!("rope qk D {d} rows {rows} heads {h}+{hk}");
            let read = |t| block(g.read_f32(t)).unwrap();
            check(&format!("{what} q"), &read(&tq), &rope(&f64s(&q), &pos, &inv, rows, h, d), ROPE);
            check(&format!("{what} k"), &read(&tk), &rope(&f64s(&k), &pos, &inv, rows, hk, d), ROPE);
            check(&format!("{what} dq"), &read(&dq), &rope_backward(&f64s(&q), &pos, &inv, rows, h, d), ROPE);
            check(&format!("{what} dk"), &read(&dk), &rope_backward(&f64s(&k), &pos, &inv, rows, hk, d), ROPE);
            for (a, b, n) in [(&tq, &tq1, "q"), (&tk, &tk1, "k"), (&dq, &dq1, "dq"), (&dk, &dk1, "dk")] {
                let same = read(a).iter().zip(&read(b)).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{what}: {n} from one dispatch differs from its own dispatch");
            }
        }
    }
}
