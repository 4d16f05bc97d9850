//! Inverted dropout, in f64: y = keep ? x / (1 - p) : 0, and dx = keep ? dy / (1 - p) : 0
//! with the same mask. The mask is an input (`keep[i]`): which elements survive is the
//! kernel's hash, checked statistically and against the host's copy in tests/ops/dropout.rs.

pub fn dropout(x: &[f64], keep: &[bool], p: f64) -> Vec<f64> {
    assert_eq!(x.len(), keep.len());
    let scale = 1.0 / (1.0 - p);
    x.iter().zip(keep).map(|(&v, &k)| if k { v * scale } else { 0.0 }).collect()
}

/// dx given dy: the forward is linear in x, so its gradient is the same masked scaling
/// (plus `dx0` when the kernel accumulates).
pub fn dropout_backward(dy: &[f64], keep: &[bool], p: f64, dx0: Option<&[f64]>) -> Vec<f64> {
    let d = dropout(dy, keep, p);
    match dx0 {
        Some(a) => d.iter().zip(a).map(|(x, y)| x + y).collect(),
        None => d,
    }
}
