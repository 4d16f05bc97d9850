//! Embedding lookup and its gradient, in f64.

/// out(rows, C) = wte(V, C)[ids] + wpe(P, C)[pos] when given.
pub fn embedding(ids: &[u32], wte: &[f64], pos: Option<(&[u32], &[f64])>, c: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(ids.len() * c);
    for (r, &id) in ids.iter().enumerate() {
        for j in 0..c {
            let mut v = wte[id as usize * c + j];
            if let Some((pos, wpe)) = pos {
                v += wpe[pos[r] as usize * c + j];
            }
            out.push(v);
        }
    }
    out
}

/// dw(V, C): row `id` is the sum of the dout(rows, C) rows looked up with that id.
pub fn embedding_backward(ids: &[u32], dout: &[f64], v: usize, c: usize) -> Vec<f64> {
    let mut dw = vec![0.0; v * c];
    for (r, &id) in ids.iter().enumerate() {
        for j in 0..c {
            dw[id as usize * c + j] += dout[r * c + j];
        }
    }
    dw
}
