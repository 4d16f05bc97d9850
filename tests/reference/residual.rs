//! Residual add out = a + b, in f64. Its gradient with respect to either input is dout.

pub fn residual(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
