use webtune::gpu::Encoder;
use webtune::ops::adamw::{step, AdamW, Schedule};
use webtune::ops::grad_norm::{grad_norm, partials_len};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::adamw::{adamw_step, Hyper};
use crate::reference::grad_norm::global_norm;

/// Each step rounds every value ~10 times in f32 (2^-24 each), and the f32 global norm
/// (GRAD_NORM) feeds the clip coefficient; over 3 steps that is a few 1e-7 of each
/// tensor's scale. 2e-6 of max|want| leaves margin without hiding a wrong formula (a wrong
/// bias correction or lerp is off by >1e-3 of the update, the update ~1e-2 of param).
const ADAMW: Tol = Tol { name: "ADAMW", abs: 0.0, rel: 2e-6 };

const HP: AdamW = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, max_grad_norm: 0.0 };

fn hyper(hp: &AdamW) -> Hyper {
    // The reference takes the same f32 hyperparameters the GPU does, widened.
    Hyper {
        lr: hp.lr as f64,
        beta1: hp.beta1 as f64,
        beta2: hp.beta2 as f64,
        eps: hp.eps as f64,
        weight_decay: hp.weight_decay as f64,
        max_grad_norm: hp.max_grad_norm as f64,
    }
}

/// (max_grad_norm, decay, eps, beta1): clipping on and off, decay on and off; an eps large
/// enough to tell where it enters the denominator; and a beta1 below 0.5, which takes the
/// other branch of torch's lerp.
const CONFIGS: &[(f32, bool, f32, f32)] = &[
    (0.0, false, 1e-8, 0.9),
    (0.0, true, 1e-8, 0.9),
    (1.0, false, 1e-8, 0.9),
    (1.0, true, 1e-8, 0.9),
    (1.0, true, 1e-3, 0.9),
    (0.0, true, 1e-8, 0.3),
];

/// Two tensors stepped together, one decayed (per `decay`) and one never (a bias), over
/// 3 steps with fresh gradients each step; the global norm comes from grad_norm on the
/// GPU, as in training.
#[test]
fn adamw_three_steps_match_reference() {
    let g = gpu();
    let mut worst = 0f64;
    for &(max_grad_norm, decay, eps, beta1) in CONFIGS {
        {
            let hp = AdamW { max_grad_norm, eps, beta1, ..HP };
            let mut rng = Rng::new(40);
            let lens = [1003usize, 7];
            let decays = [decay, false];
            let params: Vec<Vec<f32>> = lens.iter().map(|&l| rng.vec(l, 1.0)).collect();
            let tp: Vec<_> = params.iter().map(|p| g.upload_f32("param", p).unwrap()).collect();
            let tg: Vec<_> = lens.iter().map(|&l| g.zeros("grad", l).unwrap()).collect();
            let tm: Vec<_> = lens.iter().map(|&l| g.zeros("m", l).unwrap()).collect();
            let tv: Vec<_> = lens.iter().map(|&l| g.zeros("v", l).unwrap()).collect();
            let partials = g.zeros("partials", partials_len(&lens)).unwrap();
            let stats = g.zeros("stats", 4).unwrap();
            let mut rp: Vec<Vec<f64>> = params.iter().map(|p| f64s(p)).collect();
            let mut rm: Vec<Vec<f64>> = lens.iter().map(|&l| vec![0.0; l]).collect();
            let mut rv = rm.clone();
            let mut clipped = false;
            for t in 1..=3u64 {
                // Gradients whose norm (~0.5 * sqrt(1010) ~ 16) is well above max_grad_norm.
                let grads: Vec<Vec<f32>> = lens.iter().map(|&l| rng.vec(l, 0.5)).collect();
                for (tg, gr) in tg.iter().zip(&grads) {
                    g.write_f32(tg, gr);
                }
                let sched = Schedule::new(g).unwrap();
                sched.write(g, &hp, t);
                let mut enc = Encoder::new(g);
                grad_norm(&mut enc, &tg, &partials, &stats);
                for k in 0..2 {
                    step(&mut enc, &hp, &sched, &tp[k], &tg[k], &tm[k], &tv[k], &stats, lens[k], decays[k]);
                }
                enc.submit();

                let g64: Vec<Vec<f64>> = grads.iter().map(|x| f64s(x)).collect();
                let n = global_norm(&[&g64[0], &g64[1]]);
                clipped |= max_grad_norm > 0.0 && n > max_grad_norm as f64;
                for k in 0..2 {
                    adamw_step(&hyper(&hp), t, &mut rp[k], &g64[k], &mut rm[k], &mut rv[k], n, decays[k]);
                }
                for k in 0..2 {
                    let what = format!("adamw {hp:?} decay={} step {t} tensor {k}", decays[k]);
                    worst =
                        worst.max(check(&format!("{what} param"), &block(g.read_f32(&tp[k])).unwrap(), &rp[k], ADAMW));
                    worst = worst.max(check(&format!("{what} m"), &block(g.read_f32(&tm[k])).unwrap(), &rm[k], ADAMW));
                    worst = worst.max(check(&format!("{what} v"), &block(g.read_f32(&tv[k])).unwrap(), &rv[k], ADAMW));
                }
            }
            assert_eq!(clipped, max_grad_norm > 0.0, "the clipping case must actually clip");
        }
    }
    println!("adamw worst relative error {worst:.2e}");
}

/// A NaN or Inf norm skips the step: param, m and v keep every bit.
#[test]
fn adamw_skips_step_on_non_finite_norm() {
    let g = gpu();
    let mut rng = Rng::new(41);
    let n = 1003;
    let param = rng.vec(n, 1.0);
    let m = rng.vec(n, 0.1);
    let v: Vec<f32> = rng.vec(n, 0.1).iter().map(|x| x * x).collect();
    let grad = rng.vec(n, 1.0);
    for bad in [f32::NAN, f32::INFINITY, -f32::NAN] {
        for max_grad_norm in [0.0, 1.0] {
            let hp = AdamW { max_grad_norm, ..HP };
            let (tp, tm, tv) =
                (g.upload_f32("p", &param).unwrap(), g.upload_f32("m", &m).unwrap(), g.upload_f32("v", &v).unwrap());
            let tg = g.upload_f32("g", &grad).unwrap();
            let stats = g.upload_f32("stats", &[bad, 0.0, 0.0, 0.0]).unwrap();
            let sched = Schedule::new(g).unwrap();
            sched.write(g, &hp, 2);
            let mut enc = Encoder::new(g);
            step(&mut enc, &hp, &sched, &tp, &tg, &tm, &tv, &stats, n, true);
            enc.submit();
            for (name, t, want) in [("param", &tp, &param), ("m", &tm, &m), ("v", &tv, &v)] {
                let got = block(g.read_f32(t)).unwrap();
                let same = got.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "adamw with norm {bad} (clip {max_grad_norm}) changed {name}");
            }
        }
    }
}

/// End to end: a NaN in one gradient makes grad_norm's norm NaN, and AdamW then skips
/// every tensor, including those whose own gradients are finite.
#[test]
fn adamw_nan_gradient_skips_all_tensors() {
    let g = gpu();
    let mut rng = Rng::new(42);
    let lens = [300usize, 5000];
    let params: Vec<Vec<f32>> = lens.iter().map(|&l| rng.vec(l, 1.0)).collect();
    let mut grads: Vec<Vec<f32>> = lens.iter().map(|&l| rng.vec(l, 1.0)).collect();
    grads[1][4321] = f32::NAN;
    let tp: Vec<_> = params.iter().map(|p| g.upload_f32("p", p).unwrap()).collect();
    let tg: Vec<_> = grads.iter().map(|p| g.upload_f32("g", p).unwrap()).collect();
    let tm: Vec<_> = lens.iter().map(|&l| g.zeros("m", l).unwrap()).collect();
    let tv: Vec<_> = lens.iter().map(|&l| g.zeros("v", l).unwrap()).collect();
    let partials = g.zeros("partials", partials_len(&lens)).unwrap();
    let stats = g.zeros("stats", 4).unwrap();
    let hp = AdamW { max_grad_norm: 1.0, ..HP };
    let sched = Schedule::new(g).unwrap();
    sched.write(g, &hp, 1);
    let mut enc = Encoder::new(g);
    grad_norm(&mut enc, &tg, &partials, &stats);
    for k in 0..2 {
        step(&mut enc, &hp, &sched, &tp[k], &tg[k], &tm[k], &tv[k], &stats, lens[k], true);
    }
    enc.submit();
    assert!(block(g.read_f32(&stats)).unwrap()[0].is_nan());
    for k in 0..2 {
        let got = block(g.read_f32(&tp[k])).unwrap();
        assert!(got.iter().zip(&params[k]).all(|(a, b)| a.to_bits() == b.to_bits()), "param {k} changed");
        assert!(block(g.read_f32(&tm[k])).unwrap().iter().all(|&x| x.to_bits() == 0), "m {k} changed");
        assert!(block(g.read_f32(&tv[k])).unwrap().iter().all(|&x| x.to_bits() == 0), "v {k} changed");
    }
}
