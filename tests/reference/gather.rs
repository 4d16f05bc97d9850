//! Row gather and its adjoint (scatter into zeros), in f64.

/// out(N, C) = x(R, C)[rows]
pub fn gather(x: &[f64], rows: &[u32], c: usize) -> Vec<f64> {
    rows.iter().flat_map(|&r| x[r as usize * c..(r as usize + 1) * c].iter().copied()).collect()
}

/// dx(R, C): zero except the gathered rows, which receive dout(N, C). Adds, so a repeated
/// row would sum (the adjoint of gather), though the op only promises distinct rows.
pub fn gather_backward(dout: &[f64], rows: &[u32], r: usize, c: usize) -> Vec<f64> {
    let mut dx = vec![0.0; r * c];
    for (i, &row) in rows.iter().enumerate() {
        for j in 0..c {
            dx[row as usize * c + j] += dout[i * c + j];
        }
    }
    dx
}
