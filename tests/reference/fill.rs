//! Fill, in f64: the first `n` elements become `value`, the rest keep their contents.

pub fn fill(t: &[f64], value: f64, n: usize) -> Vec<f64> {
    t.iter().enumerate().map(|(i, &v)| if i < n { value } else { v }).collect()
}
