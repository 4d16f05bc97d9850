//! Causal, segment-masked, grouped-query attention and its gradients in f64, with the full
//! (T, T) softmax materialized.

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hk: usize,
    pub d: usize,
    /// Sliding window: query i sees key j iff i - j < window (transformers' sliding-window
    /// causal mask); None: every earlier key.
    pub window: Option<usize>,
    /// The scores' scale; None: 1 / sqrt(D).
    pub scale: Option<f64>,
}

impl Shape {
    fn qi(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.h + h) * self.d
    }
    fn ki(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.hk + h / (self.h / self.hk)) * self.d
    }
    fn visible(&self, seg: &[u32], b: usize, tq: usize, tk: usize) -> bool {
        tk <= tq && self.window.is_none_or(|w| tq - tk < w) && seg[b * self.t + tk] == seg[b * self.t + tq]
    }

    fn scale(&self) -> f64 {
        self.scale.unwrap_or(1.0 / (self.d as f64).sqrt())
    }

    /// P[(b, h)] as a (T, T) row-major matrix, zero where masked.
    pub fn probs(&self, q: &[f64], k: &[f64], seg: &[u32], b: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
        let (t, d) = (self.t, self.d);
        let scale = self.scale();
        let mut p = vec![0.0; t * t];
        let mut lse = vec![0.0; t];
        for i in 0..t {
            let mut s = vec![f64::NEG_INFINITY; t];
            for (j, sj) in s.iter_mut().enumerate() {
                if self.visible(seg, b, i, j) {
                    let (qr, kr) = (&q[self.qi(b, i, h)..][..d], &k[self.ki(b, j, h)..][..d]);
                    *sj = scale * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>();
                }
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            lse[i] = m + z.ln();
            for j in 0..t {
                p[i * t + j] = (s[j] - lse[i]).exp();
            }
        }
        (p, lse)
    }
}

/// (o (rows, H*D), lse (B*H*T) at (b*H + h)*T + t).
pub fn attention(s: &Shape, q: &[f64], k: &[f64], v: &[f64], seg: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let (t, d) = (s.t, s.d);
    let mut o = vec![0.0; s.b * t * s.h * d];
    let mut lse = vec![0.0; s.b * s.h * t];
    for b in 0..s.b {
        for h in 0..s.h {
            let (p, l) = s.probs(q, k, seg, b, h);
            lse[(b * s.h + h) * t..][..t].copy_from_slice(&l);
            for i in 0..t {
                for j in 0..t {
                    for x in 0..d {
                        o[s.qi(b, i, h) + x] += p[i * t + j] * v[s.ki(b, j, h) + x];
                    }
                }
            }
        }
    }
    (o, lse)
}

/// (dq, dk, dv) given dout, through dP = dO V^T, dS = P * (dP - rowsum(P * dP)).
pub fn attention_backward(
    s: &Shape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    seg: &[u32],
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, d) = (s.t, s.d);
    let scale = s.scale();
    let mut dq = vec![0.0; q.len()];
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    for b in 0..s.b {
        for h in 0..s.h {
            let (p, _) = s.probs(q, k, seg, b, h);
            let dot = |x: usize, y: usize, a: &[f64], c: &[f64]| (0..d).map(|z| a[x + z] * c[y + z]).sum::<f64>();
            let mut dp = vec![0.0; t * t];
            for i in 0..t {
                for j in 0..t {
                    dp[i * t + j] = dot(s.qi(b, i, h), s.ki(b, j, h), dout, v);
                }
            }
            for i in 0..t {
                let c: f64 = (0..t).map(|j| p[i * t + j] * dp[i * t + j]).sum();
                for j in 0..t {
                    let pij = p[i * t + j];
                    let ds = pij * (dp[i * t + j] - c) * scale;
                    let (qo, ko) = (s.qi(b, i, h), s.ki(b, j, h));
                    for x in 0..d {
                        dq[qo + x] += ds * k[ko + x];
                        dk[ko + x] += ds * q[qo + x];
                        dv[ko + x] += pij * dout[qo + x];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}
