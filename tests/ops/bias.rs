use webtune::gpu::Encoder;
use webtune::ops::bias::{backward, scratch_len};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::bias::bias_backward;

/// f32 sums of up to 1000 O(1) terms (in chunks of 32, then the chunks), plus the
/// pre-filled value: each rounding at most 2^-24 of a partial sum, relative to the largest
/// column sum (~sqrt(M)). Worst seen 6.5e-7 with one stage at M = 1000, 1.9e-7 with two.
const BIAS_GRAD: Tol = Tol { name: "BIAS_GRAD", abs: 0.0, rel: 1e-6 };

// (M, N): one row, fewer rows than a chunk, a ragged last chunk, exact chunks, many.
const SHAPES: &[(usize, usize)] = &[(1, 1), (5, 3), (31, 129), (33, 7), (64, 576), (97, 257), (1000, 65), (4, 1000)];

#[test]
fn bias_backward_matches_reference() {
    let g = gpu();
    let mut rng = Rng::new(71);
    for &(m, n) in SHAPES {
        for (two_stage, accumulate) in [(true, true), (true, false), (false, true), (false, false)] {
            let dy = rng.vec(m * n, 1.0);
            let db0 = rng.vec(n, 1.0);
            let mut want = bias_backward(&f64s(&dy), m, n);
            if accumulate {
                want.iter_mut().zip(&db0).for_each(|(w, d0)| *w += *d0 as f64);
            }
            let (tdy, tdb) = (g.upload_f32("dy", &dy).unwrap(), g.upload_f32("db", &db0).unwrap());
            // NaN: the first stage must overwrite the scratch, never read it.
            let scratch = two_stage.then(|| g.upload_f32("scratch", &vec![f32::NAN; scratch_len(m, n)]).unwrap());
            let mut enc = Encoder::new(g);
            backward(&mut enc, m, n, &tdy, &tdb, scratch.as_ref(), accumulate);
            enc.submit();
            let what = format!("bias backward {m}x{n} two_stage={two_stage} acc={accumulate}");
            let e = check(&what, &block(g.read_f32(&tdb)).unwrap(), &want, BIAS_GRAD);
            eprintln!("{what}: worst rel {e:.2e}");
        }
    }
}

/// Two runs give the same bits (fixed chunks, fixed order).
#[test]
fn bias_backward_is_deterministic() {
    let g = gpu();
    let (m, n) = (1000, 300);
    let dy = Rng::new(72).vec(m * n, 1.0);
    let tdy = g.upload_f32("dy", &dy).unwrap();
    let scratch = g.zeros("scratch", scratch_len(m, n)).unwrap();
    let run = || {
        let db = g.zeros("db", n).unwrap();
        let mut enc = Encoder::new(g);
        backward(&mut enc, m, n, &tdy, &db, Some(&scratch), true);
        enc.submit();
        block(g.read_f32(&db)).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}
