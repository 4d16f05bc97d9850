//! RMSNorm y = x / sqrt(mean(x^2) + eps) * w, and its gradients, in f64.

/// (y(rows, C), rstd(rows)).
pub fn rmsnorm(x: &[f64], w: &[f64], rows: usize, c: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * c];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let xr = &x[r * c..(r + 1) * c];
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / c as f64;
        rstd[r] = 1.0 / (ms + eps).sqrt();
        for j in 0..c {
            y[r * c + j] = xr[j] * rstd[r] * w[j];
        }
    }
    (y, rstd)
}

/// (dx(rows, C), dw(C)) given dy. Differentiates through rstd from scratch: with
/// s = sum x^2, rstd = (s / C + eps)^(-1/2), d rstd / d x_j = -rstd^3 x_j / C.
pub fn rmsnorm_backward(x: &[f64], w: &[f64], dy: &[f64], rows: usize, c: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (_, rstd) = rmsnorm(x, w, rows, c, eps);
    let mut dx = vec![0.0; rows * c];
    let mut dw = vec![0.0; c];
    for r in 0..rows {
        let rs = rstd[r];
        // dL/drstd = sum_i dy_i x_i w_i
        let d_rstd: f64 = (0..c).map(|i| dy[r * c + i] * x[r * c + i] * w[i]).sum();
        for j in 0..c {
            let o = r * c + j;
            dx[o] = dy[o] * w[j] * rs + d_rstd * (-rs * rs * rs * x[o] / c as f64);
            dw[j] += dy[o] * x[o] * rs;
        }
    }
    (dx, dw)
}
