use webtune::gpu::Encoder;
use webtune::ops::fill::fill;

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::fill::fill as reference;

/// A store of the value, with no arithmetic: every element must be bit-exact.
const FILL: Tol = Tol { name: "FILL", abs: 0.0, rel: 0.0 };

/// Fill the first `n` of `len` random elements with `value`.
fn run(rng: &mut Rng, len: usize, n: usize, value: f32) {
    let g = gpu();
    let t0 = rng.vec(len, 1.0);
    let t = g.upload_f32("t", &t0).unwrap();
    let mut enc = Encoder::new(g);
    fill(&mut enc, &t, value, n);
    enc.submit();
    let want = reference(&f64s(&t0), value as f64, n);
    check(&format!("fill {n} of {len} with {value}"), &block(g.read_f32(&t)).unwrap(), &want, FILL);
}

#[test]
fn fill_matches_reference() {
    let mut rng = Rng::new(91);
    for &(len, n) in &[(1, 1), (1, 0), (3, 3), (7, 5), (256, 255), (300, 257), (1000, 1000), (33 * 1000 + 5, 33 * 1000)]
    {
        for value in [0.0, -2.5, 1e-30, 3.0e38] {
            run(&mut rng, len, n, value);
        }
    }
}

/// Values `check` cannot compare (non-finite, signed zero) stored bit for bit.
#[test]
fn fill_stores_any_value_bit_for_bit() {
    let g = gpu();
    let n = 300;
    for value in [-0.0f32, f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let t = g.upload_f32("t", &vec![7.0; n]).unwrap();
        let mut enc = Encoder::new(g);
        fill(&mut enc, &t, value, n - 1);
        enc.submit();
        let got = block(g.read_f32(&t)).unwrap();
        if let Some(i) = got[..n - 1].iter().position(|x| x.to_bits() != value.to_bits()) {
            panic!("fill {value}: element {i} has bits {:#x}, not {:#x}", got[i].to_bits(), value.to_bits());
        }
        assert_eq!(got[n - 1], 7.0, "fill {value} wrote past n");
    }
}

#[test]
fn fill_writes_exactly_n_and_folds_past_65535_workgroups() {
    let g = gpu();
    // 65536 workgroups of 256 plus a ragged tail: the grid folds into y.
    let n = 65536 * 256 + 3;
    let t = g.upload_f32("t", &vec![7.0; n + 5]).unwrap();
    let mut enc = Encoder::new(g);
    fill(&mut enc, &t, -2.5, n);
    enc.submit();
    let got = block(g.read_f32(&t)).unwrap();
    if let Some(i) = got[..n].iter().position(|&x| x != -2.5) {
        panic!("fill: element {i} is {} not -2.5", got[i]);
    }
    assert!(got[n..].iter().all(|&x| x == 7.0), "fill wrote past n");
}
