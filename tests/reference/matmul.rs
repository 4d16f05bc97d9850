//! y = x W^T + b for W (out, in) and its gradients, in f64.

/// y(rows, out) = x(rows, in) . W(out, in)^T + b(out)
pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, fin: usize, fout: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * fout];
    for r in 0..rows {
        for o in 0..fout {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..fin {
                s += x[r * fin + i] * w[o * fin + i];
            }
            y[r * fout + o] = s;
        }
    }
    y
}

/// (dx, dW, db) for y = x W^T + b given dy.
pub fn linear_backward(
    dy: &[f64],
    x: &[f64],
    w: &[f64],
    rows: usize,
    fin: usize,
    fout: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; rows * fin];
    let mut dw = vec![0.0; fout * fin];
    let mut db = vec![0.0; fout];
    for r in 0..rows {
        for o in 0..fout {
            let g = dy[r * fout + o];
            db[o] += g;
            for i in 0..fin {
                dx[r * fin + i] += g * w[o * fin + i];
                dw[o * fin + i] += g * x[r * fin + i];
            }
        }
    }
    (dx, dw, db)
}

/// Transpose a (rows, cols) row-major matrix.
pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}
