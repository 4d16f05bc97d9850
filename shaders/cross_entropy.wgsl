// Fused softmax + cross-entropy, forward and backward in one kernel: the loss of each row
// and the gradient of the logits, written over the logits so no (N, V) probability tensor
// is ever stored (at V = 152k that tensor would be the largest of the step).
//
//   nll[i]       = logsumexp(logits[i]) - logits[i, targets[i]]           (unweighted)
//   dlogits[i,j] = weights[i] * (softmax(logits[i])[j] - (j == targets[i]))
//
// One WG-thread workgroup per row, the grid folded into y past 65535 rows. Pass 1: each
// thread keeps an online (max, sum of exp(x - max)) over its strided elements, so the row
// is read once for the normaliser and exp never sees a positive argument (stable for any
// magnitude); a tree merges the WG pairs (wg_max_sum, common.wgsl). Pass 2 re-reads the
// row and writes the gradient.
// The thread that reads logits[target] in pass 1 is the only one that overwrites it in
// pass 2 (same stride), so reading it needs no barrier.
// FLOPs ~ 8*N*V (two exps); bytes 4*(3*N*V + 3*N).

struct Params {
    n: u32,
    v: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>; // (N, V) in, dlogits out
@group(0) @binding(2) var<storage, read> targets: array<u32>;      // (N), each < V
@group(0) @binding(3) var<storage, read> weights: array<f32>;      // (N)
@group(0) @binding(4) var<storage, read_write> nll: array<f32>;    // (N)

// The running max of a thread that has seen nothing: finite, so merging two empty
// partials computes exp(0) * 0 rather than exp(-inf - -inf) = NaN.
const LOWEST: f32 = -3.0e38;

var<workgroup> target_logit: f32;

@compute @workgroup_size(WG)
fn cross_entropy_forward_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) { return; } // uniform across the workgroup
    let base = row * p.v;
    let tgt = targets[row];

    var m = LOWEST;
    var s = 0.0;
    for (var j = t; j < p.v; j += WG) {
        let x = logits[base + j];
        if (x > m) {
            s = s * exp(m - x) + 1.0;
            m = x;
        } else {
            s += exp(x - m);
        }
        if (j == tgt) { target_logit = x; }
    }
    let ms = wg_max_sum(vec2(m, s), t);
    // exp(x - max) / sum rather than exp(x - logsumexp): x - max is exact for the logits
    // that matter, whereas rounding logsumexp costs ulp(|logit|) of relative error in every
    // probability (1e-5 at |logit| ~ 80).
    let mx = ms.x;
    let inv_s = 1.0 / ms.y;
    if (t == 0u) {
        nll[row] = (mx - target_logit) + log(ms.y);
    }

    let w = weights[row];
    for (var j = t; j < p.v; j += WG) {
        var g = exp(logits[base + j] - mx) * inv_s;
        if (j == tgt) { g -= 1.0; }
        logits[base + j] = w * g;
    }
}
