use webtune::gpu::Encoder;
use webtune::ops::fill::fill;

use crate::common::{block, gpu};

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
