//! Global L2 norm of several tensors, in f64.

pub fn global_norm(tensors: &[&[f64]]) -> f64 {
    tensors.iter().flat_map(|t| t.iter()).map(|x| x * x).sum::<f64>().sqrt()
}
