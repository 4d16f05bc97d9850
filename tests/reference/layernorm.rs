//! LayerNorm y = (x - mean) / sqrt(var + eps) * w + b (biased variance), and its
//! gradients, in f64.

/// (y(rows, C), mean(rows), rstd(rows)).
pub fn layernorm(x: &[f64], w: &[f64], b: &[f64], rows: usize, c: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * c];
    let mut mean = vec![0.0; rows];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let xr = &x[r * c..(r + 1) * c];
        let m = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
        mean[r] = m;
        rstd[r] = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            y[r * c + j] = (xr[j] - m) * rstd[r] * w[j] + b[j];
        }
    }
    (y, mean, rstd)
}

/// (dx(rows, C), dw(C), db(C)) given dy, by the chain rule through mean and variance:
/// dvar = sum g (x - m) * (-1/2) rstd^3, dmean = -rstd sum g + dvar * (-2/C) sum (x - m),
/// dx = g rstd + dvar 2 (x - m) / C + dmean / C, with g = dy * w.
pub fn layernorm_backward(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    dy: &[f64],
    rows: usize,
    c: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, mean, rstd) = layernorm(x, w, b, rows, c, eps);
    let cf = c as f64;
    let mut dx = vec![0.0; rows * c];
    let mut dw = vec![0.0; c];
    let mut db = vec![0.0; c];
    for r in 0..rows {
        let (m, rs) = (mean[r], rstd[r]);
        let o = r * c;
        let g: Vec<f64> = (0..c).map(|j| dy[o + j] * w[j]).collect();
        let dvar: f64 = (0..c).map(|j| g[j] * (x[o + j] - m)).sum::<f64>() * -0.5 * rs * rs * rs;
        let dmean = -rs * g.iter().sum::<f64>() + dvar * -2.0 * (0..c).map(|j| x[o + j] - m).sum::<f64>() / cf;
        for j in 0..c {
            dx[o + j] = g[j] * rs + dvar * 2.0 * (x[o + j] - m) / cf + dmean / cf;
            dw[j] += dy[o + j] * (x[o + j] - m) * rs;
            db[j] += dy[o + j];
        }
    }
    (dx, dw, db)
}
