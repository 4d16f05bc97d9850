/// db(N): the column sums of dy(M, N) (the bias gradient of y = x W + b).
pub fn bias_backward(dy: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut db = vec![0.0; n];
    for r in 0..m {
        for (j, d) in db.iter_mut().enumerate() {
            *d += dy[r * n + j];
        }
    }
    db
}
