//! GELU, tanh form (HF "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in f64.

const K: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)
const A: f64 = 0.044715;

pub fn gelu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| 0.5 * v * (1.0 + (K * (v + A * v * v * v)).tanh())).collect()
}

/// dx given dout: d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) K (1 + 3 A x^2), t = tanh(u).
pub fn gelu_backward(x: &[f64], dout: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dout)
        .map(|(&v, &d)| {
            let t = (K * (v + A * v * v * v)).tanh();
            d * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * K * (1.0 + 3.0 * A * v * v))
        })
        .collect()
}

/// GeGLU out = gelu(gate) * up (Gemma's gated MLP).
pub fn geglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gelu(gate).iter().zip(up).map(|(a, u)| a * u).collect()
}

/// (dgate, dup) given dout.
pub fn geglu_backward(gate: &[f64], up: &[f64], dout: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let du: Vec<f64> = dout.iter().zip(up).map(|(d, u)| d * u).collect();
    let dgate = gelu_backward(gate, &du);
    let dup = gelu(gate).iter().zip(dout).map(|(a, d)| a * d).collect();
    (dgate, dup)
}
