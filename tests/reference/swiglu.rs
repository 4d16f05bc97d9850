//! SwiGLU out = silu(gate) * up, silu(g) = g / (1 + e^-g), and its gradients, in f64.

pub fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// (dgate, dup) given dout. silu'(g) = sigma(g) + g sigma(g) (1 - sigma(g)).
pub fn swiglu_backward(gate: &[f64], up: &[f64], dout: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dgate = Vec::with_capacity(gate.len());
    let mut dup = Vec::with_capacity(gate.len());
    for ((&g, &u), &d) in gate.iter().zip(up).zip(dout) {
        let s = 1.0 / (1.0 + (-g).exp());
        dgate.push(d * u * (s + g * s * (1.0 - s)));
        dup.push(d * silu(g));
    }
    (dgate, dup)
}
