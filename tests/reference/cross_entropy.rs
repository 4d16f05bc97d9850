//! Softmax cross-entropy per row and its weighted gradient, in f64.

/// (nll(N), dlogits(N, V)): nll[i] = logsumexp(logits[i]) - logits[i, t_i] (unweighted);
/// dlogits = d/dlogits of sum_i weights[i] * nll[i] = weights[i] * (softmax - onehot).
pub fn cross_entropy(logits: &[f64], targets: &[u32], weights: &[f64], n: usize, v: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nll = vec![0.0; n];
    let mut d = vec![0.0; n * v];
    for i in 0..n {
        let row = &logits[i * v..(i + 1) * v];
        let mx = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        let sum: f64 = row.iter().map(|&x| (x - mx).exp()).sum();
        let lse = mx + sum.ln();
        let t = targets[i] as usize;
        nll[i] = lse - row[t];
        for j in 0..v {
            let p = (row[j] - lse).exp();
            d[i * v + j] = weights[i] * (p - if j == t { 1.0 } else { 0.0 });
        }
    }
    (nll, d)
}

/// The scalar whose gradient `cross_entropy` returns: sum_i weights[i] * nll[i].
pub fn weighted_loss(logits: &[f64], targets: &[u32], weights: &[f64], n: usize, v: usize) -> f64 {
    let (nll, _) = cross_entropy(logits, targets, weights, n, v);
    nll.iter().zip(weights).map(|(l, w)| l * w).sum()
}
