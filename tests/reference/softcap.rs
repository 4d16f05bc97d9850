//! Logit soft-capping, y = cap * tanh(z / cap), in f64.

pub fn softcap(z: &[f64], cap: f64) -> Vec<f64> {
    z.iter().map(|&v| cap * (v / cap).tanh()).collect()
}

/// dz given dy: d/dz cap * tanh(z / cap) = 1 - tanh(z / cap)^2 = 1 / cosh(z / cap)^2 (the
/// second form: 1 - tanh^2 cancels to 0 in f64 once tanh rounds to 1, near |u| = 19).
pub fn softcap_backward(z: &[f64], dy: &[f64], cap: f64) -> Vec<f64> {
    z.iter()
        .zip(dy)
        .map(|(&v, &d)| {
            let sech = 1.0 / (v / cap).cosh();
            d * sech * sech
        })
        .collect()
}
