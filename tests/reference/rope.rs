//! Rotary position embedding (HF Llama, rotate-half) and its gradient, in f64.

/// HF's angle: the f32 product pos * inv_freq (its matmul runs in f32), then widened.
fn angle(pos: u32, f: f32) -> f64 {
    (pos as f32 * f) as f64
}

/// x(rows, heads*D) rotated by pos(rows): out = x*cos + rotate_half(x)*sin, where
/// rotate_half(x) = cat(-x[D/2..], x[..D/2]).
pub fn rope(x: &[f64], pos: &[u32], inv_freq: &[f32], rows: usize, heads: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    let mut y = vec![0.0; x.len()];
    for r in 0..rows {
        for h in 0..heads {
            let row = &x[(r * heads + h) * d..][..d];
            for j in 0..d {
                let a = angle(pos[r], inv_freq[j % half]);
                let rot = if j < half { -row[j + half] } else { row[j - half] };
                y[(r * heads + h) * d + j] = row[j] * a.cos() + rot * a.sin();
            }
        }
    }
    y
}

/// dx for y = rope(x) given dy: the rotation is linear, so dx = R^T dy, written out
/// from y_j = x_j cos + rot_j sin with rot_j = -x_{j+half} (j < half), x_{j-half} (else).
pub fn rope_backward(dy: &[f64], pos: &[u32], inv_freq: &[f32], rows: usize, heads: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    let mut dx = vec![0.0; dy.len()];
    for (r, &pr) in pos.iter().enumerate().take(rows) {
        for h in 0..heads {
            let o = (r * heads + h) * d;
            for j in 0..d {
                let a = angle(pr, inv_freq[j % half]);
                dx[o + j] += dy[o + j] * a.cos();
                if j < half {
                    dx[o + j + half] -= dy[o + j] * a.sin();
                } else {
                    dx[o + j - half] += dy[o + j] * a.sin();
                }
            }
        }
    }
    dx
}
