//! One forward and backward pass of a micro-batch, llm.c style: each piece's backward
//! (`*_bwd`) sits beside its forward (`*_fwd`), takes the same argument names (the
//! forward's outputs become gradients, `d`-prefixed) and reads as the forward in reverse,
//! from `linear` and `norm` up through `qkv`, `attn`, `mlp` and `block` to the embedding
//! and the head, so `backward` is `forward`'s block loop run backwards. The dispatch
//! order within each is what the results' bits depend on: where a backward sums several
//! input gradients into one buffer it keeps the forward's order. Every parameter gradient
//! is ADDED into its gradient buffer, so micro-batches accumulate and the caller zeroes
//! the gradients once per optimizer step.

use super::arch::{AttnP, BlockP, LinearP, MlpP, NormP};
use super::config::Arch;
use super::lora::{self, LoraP};
use super::params::Pid;
use super::workspace::{
    head_k_ranges, softcap as softcap_of, Grads, Inputs, LayerActs, LoraActs, QkNormActs, Workspace,
};
use super::Model;
use crate::gpu::{Encoder, Tensor};
use crate::ops::attention::{AttnShape, CacheShape};
use crate::ops::dequant::CompactWeight;
use crate::ops::dropout::{self, Mask, Salts};
use crate::ops::matmul::{
    matmul, matmul_ex, matmul_scaled, Adapter, Extras, KSplit, Linear, LoraEpilogue, Op, SwigluEpilogue, Weight,
    WeightLayout,
};
use crate::ops::rmsnorm::Scale;
use crate::ops::rope::RopeTable;
use crate::ops::{
    attention, bias, copy2d, cross_entropy, embedding, fill, gather, gelu, layernorm, lora_grad, lora_siblings,
    rmsnorm, rope, softcap, swiglu,
};

/// What a layer with a LoRA adapter needs besides its input and output: the workspace's
/// adapter buffers (`Workspace::lora`, made by `Model::workspace`) and the dropout salt
/// (None: no dropout, as in scoring and generation).
#[derive(Clone, Copy)]
pub struct LoraIo<'a> {
    pub acts: &'a LoraActs,
    pub salt: Option<Salts<'a>>,
    /// Each adapter's u = drop(x) A^T already holds this micro-batch's values (kept per
    /// adapter site from the forward): a recomputing forward skips the dropout and the
    /// u product, which would write the same bits again.
    pub u_ready: bool,
}

impl<'a> LoraIo<'a> {
    pub fn of(ws: &'a Workspace, inp: &'a Inputs) -> Option<LoraIo<'a>> {
        let salt = inp.dropout_salt.as_ref().map(|(buf, slot)| Salts { buf, slot: *slot });
        ws.lora.as_ref().map(|acts| LoraIo { acts, salt, u_ready: false })
    }
}

/// SwiGLU's backward riding on a gated MLP's down projection (`Model::linear_bwd_glu`):
/// the saved gate (h1) and up (h2) (rows, F), dup's buffer, and dact's scratch for the
/// path that cannot fuse (LoRA dropout on the down projection).
#[derive(Clone, Copy)]
struct GluBwd<'a> {
    gate: &'a Tensor,
    up: &'a Tensor,
    dact: &'a Tensor,
    dup: &'a Tensor,
}

/// A weight matrix held for one product (`Model::matrix`).
enum Matrix {
    F32(Tensor),
    Compact(CompactWeight),
}

impl Matrix {
    fn get(&self) -> Weight<'_> {
        match self {
            Matrix::F32(t) => Weight::F32(t),
            Matrix::Compact(c) => Weight::Compact(c),
        }
    }
}

/// What the forward pass ends with. The head runs over the N loss rows in chunks of
/// `ws.head_chunk()` rows (gather, final norm, logits, loss), so the (N, V) logits are held
/// whole only when asked for (`WorkspaceOpts::all_logits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Fused softmax + cross-entropy: per-row NLL in `ws.nll` (scoring, no gradients).
    Loss,
    /// Just the logits (scoring, parity tests, the decoder's reference in tests):
    /// `ws.logits` holds the (N, V) logits of every loss row; the workspace needs
    /// `WorkspaceOpts::all_logits`.
    Logits,
    /// Training: the loss as with `Loss`, and each chunk's head backward right after its
    /// loss (the logits' gradient never outlives its chunk): the LM head's and the final
    /// norm's gradients are added, and `ws.grads.dres` receives the gradient of the last
    /// block's output. `Model::backward` continues from there.
    Train,
}

/// The micro-batch's own causal attention (training and scoring): each query sees the
/// keys of its packed segment up to its own position; the forward saves each query's
/// log-sum-exp in `lse` for the backward.
#[derive(Clone, Copy)]
pub(crate) struct Causal<'a> {
    pub shape: AttnShape,
    pub seg: &'a Tensor,
    pub lse: &'a Tensor,
}

/// Which keys a block's attention sees, in `attn_fwd` / `block_fwd`.
pub(crate) enum Attend<'a> {
    Causal(Causal<'a>),
    /// Decoding: the new rows' K/V are appended to one layer's cache (B*cap, Hk*D) at their
    /// positions, and their queries see the cached keys up to their own positions. There
    /// is no log-sum-exp and no backward. `visible` counts the (row, key) pairs, for the
    /// profile's cost.
    Cached {
        shape: &'a CacheShape,
        k_cache: &'a Tensor,
        v_cache: &'a Tensor,
        visible: usize,
    },
}

impl Model {
    fn lin(&self, l: &LinearP, rows: usize) -> Linear {
        Linear { rows, fan_in: l.fan_in, fan_out: l.fan_out, layout: l.layout }
    }

    /// The dropout mask of adapter `lp` for this micro-batch, when dropout is on: its salt
    /// is the micro-batch's slot of the salt buffer (written by the trainer each step).
    fn lora_mask<'a>(&self, lp: &LoraP, salt: Option<Salts<'a>>) -> Option<(Mask, Salts<'a>)> {
        let cfg = self.lora.as_ref()?;
        let salt = salt?;
        let mask = Mask { p: cfg.dropout, seed: (cfg.seed ^ (cfg.seed >> 32)) as u32, salt: 0, site: lp.site as u32 };
        (cfg.dropout > 0.0).then_some((mask, salt))
    }

    /// A weight matrix as the matmul reads it: compact when the parameter store keeps it so
    /// (a frozen base under LoRA), f32 otherwise.
    fn matrix(&self, pid: Pid) -> Matrix {
        match self.params.compact(pid) {
            Some(c) => Matrix::Compact(c),
            None => Matrix::F32(self.params.weight(pid)),
        }
    }

    fn lora_io<'l, 'a>(l: &'l LinearP, lora: Option<LoraIo<'a>>) -> Option<(&'l LoraP, LoraIo<'a>)> {
        let lp = l.lora.as_ref()?;
        let io = lora.expect("a layer with a LoRA adapter needs the workspace's adapter buffers (Model::workspace)");
        Some((lp, io))
    }

    /// Sibling adapters (layers sharing one input, in forward order) whose u and dA products
    /// can share a dispatch (`ops::lora_siblings`): each adapted, one rank and scale, no
    /// dropout (each adapter drops its input with its own mask), their A (and dA) in one
    /// arena, on an adapter where the kernel table gives those products `matmul_dot`.
    fn siblings<'l>(&self, gpu: &crate::gpu::Gpu, ls: &[&'l LinearP], lora: Option<LoraIo>) -> Option<Vec<&'l LoraP>> {
        let io = lora?;
        let lps: Vec<&LoraP> = ls.iter().map(|l| l.lora.as_ref()).collect::<Option<_>>()?;
        let (r, s) = (lps[0].rank, lps[0].scale);
        let same = lps.iter().all(|lp| lp.rank == r && lp.scale == s && self.lora_mask(lp, io.salt).is_none());
        let fan_in = ls.iter().all(|l| l.fan_in == ls[0].fan_in);
        let ok = same && fan_in && ls.len() <= lora_siblings::MAX && lora_grad::applies(gpu, r);
        (ok && self.sibling_span(&lps, false).is_some()).then_some(lps)
    }

    /// The A matrices (or with `grads` their gradients) of `lps` as one view of their arena.
    fn sibling_span(&self, lps: &[&LoraP], grads: bool) -> Option<lora_siblings::Span> {
        let p = &self.params;
        if lps.iter().any(|lp| p.compact(lp.a).is_some()) {
            return None;
        }
        let arena = p.slots[lps[0].a].arena;
        if lps.iter().any(|lp| p.slots[lp.a].arena != arena) {
            return None;
        }
        let base = lps.iter().map(|lp| p.slots[lp.a].offset).min()?;
        let end = lps.iter().map(|lp| p.slots[lp.a].offset + p.specs[lp.a].numel()).max()?;
        let a = &p.arenas[arena];
        let t = if grads { a.grads.as_ref()? } else { &a.weights };
        let offsets = lps.iter().map(|lp| p.slots[lp.a].offset - base).collect();
        Some(lora_siblings::Span { span: t.view(base, end - base), offsets })
    }

    /// The forward's u of sibling adapters sharing the input x (rows, in) in one dispatch,
    /// when they can (`siblings`): returns the adapter buffers with `u_ready` set for them.
    fn siblings_fwd<'a>(
        &self,
        enc: &mut Encoder,
        ls: &[&LinearP],
        rows: usize,
        x: &Tensor,
        lora: Option<LoraIo<'a>>,
    ) -> Option<LoraIo<'a>> {
        let io = lora?;
        if io.u_ready {
            return lora;
        }
        let Some(lps) = self.siblings(enc.gpu(), ls, lora) else { return lora };
        let span = self.sibling_span(&lps, false)?;
        let u: Vec<&Tensor> = lps.iter().map(|lp| &io.acts.u[lp.site]).collect();
        lora_siblings::forward(enc, (rows, ls[0].fan_in, lps[0].rank), x, &span, &u);
        Some(LoraIo { u_ready: true, ..io })
    }

    /// The backward of sibling adapters sharing the input x: `linear_bwd` on each, in order
    /// (`dys[j]`, dx overwritten by the first and added to by the others), with their dA
    /// in one dispatch after them when they can (`siblings`). Each sibling's g must outlive
    /// the later siblings' backward, so the first uses the workspace's g scratch and each
    /// later one the u of the sibling before it, whose last reader (its dB) has run.
    #[allow(clippy::too_many_arguments)]
    fn siblings_bwd(
        &self,
        enc: &mut Encoder,
        ls: &[&LinearP],
        rows: usize,
        dys: &[&Tensor],
        x: &Tensor,
        dx: &Tensor,
        lora: Option<LoraIo>,
        red: &Tensor,
    ) {
        let joint = self.siblings(enc.gpu(), ls, lora).and_then(|lps| Some((self.sibling_span(&lps, true)?, lps)));
        let Some(((da, lps), io)) = joint.zip(lora) else {
            for (j, (l, dy)) in ls.iter().zip(dys).enumerate() {
                self.linear_bwd(enc, l, rows, dy, x, Some((dx, j > 0)), lora, red);
            }
            return;
        };
        let gs: Vec<&Tensor> =
            (0..ls.len()).map(|j| if j == 0 { &io.acts.g } else { &io.acts.u[lps[j - 1].site] }).collect();
        for (j, (l, dy)) in ls.iter().zip(dys).enumerate() {
            self.linear_bwd_glu(enc, l, rows, dy, x, Some((dx, j > 0)), None, Some(gs[j]), lora, red);
        }
        lora_siblings::backward(enc, (rows, ls[0].fan_in, lps[0].rank), lps[0].scale, x, &gs, &da);
    }

    /// y = x W [+ b] [+ resid] [+ s * (drop(x) A^T) B^T with a LoRA adapter, saving
    /// u = drop(x) A^T (rows, R) for the backward].
    #[allow(clippy::too_many_arguments)]
    fn linear_fwd(
        &self,
        enc: &mut Encoder,
        l: &LinearP,
        rows: usize,
        x: &Tensor,
        resid: Option<&Tensor>,
        y: &Tensor,
        lora: Option<LoraIo>,
    ) {
        self.linear_fwd_glu(enc, l, rows, x, resid, y, None, lora)
    }

    /// `linear_fwd`, and with `glu` (a gated MLP's up projection, y = up) also
    /// act = silu(gate) * y in the same dispatch.
    #[allow(clippy::too_many_arguments)]
    fn linear_fwd_glu(
        &self,
        enc: &mut Encoder,
        l: &LinearP,
        rows: usize,
        x: &Tensor,
        resid: Option<&Tensor>,
        y: &Tensor,
        glu: Option<SwigluEpilogue>,
        lora: Option<LoraIo>,
    ) {
        let p = &self.params;
        let b = l.b.map(|b| p.weight(b));
        let w = self.matrix(l.w);
        // The epilogue reads SwiGLU's operands through the bias and resid bindings.
        let glu_ok = glu.is_none() || (b.is_none() && resid.is_none());
        let swiglu = glu.filter(|_| glu_ok);
        let Some((lp, io)) = Self::lora_io(l, lora) else {
            let ex = Extras { bias: b.as_ref(), resid, swiglu, ..Default::default() };
            self.lin(l, rows).forward_ex(enc, x, w.get(), ex, y, false);
            if !glu_ok {
                self.swiglu_unfused_fwd(enc, glu, y, rows);
            }
            return;
        };
        let (r, u) = (lp.rank, &io.acts.u[lp.site]);
        // u(rows, R) = drop(x)(rows, in) . A^T, then y(rows, out) = x W^T [+ b] [+ resid]
        // + s * u . B^T in one dispatch (the adapter in the base product's epilogue).
        if !io.u_ready {
            let xin = match (self.lora_mask(lp, io.salt), io.acts.xd.as_ref()) {
                (Some((mask, salts)), Some(xd)) => {
                    dropout::forward_salted(enc, &mask, Some(salts), x, xd, rows * l.fan_in);
                    xd
                }
                _ => x,
            };
            matmul(enc, (rows, r, l.fan_in), xin, Op::N, &p.weight(lp.a), Op::T, None, None, u, false);
        }
        let lb = p.weight(lp.b);
        let lora = LoraEpilogue { u, b: &lb, b_t: false, rank: r, scale: lp.scale };
        let ex = Extras { bias: b.as_ref(), resid, lora: Some(lora), swiglu, ..Default::default() };
        self.lin(l, rows).forward_ex(enc, x, w.get(), ex, y, false);
        if !glu_ok {
            self.swiglu_unfused_fwd(enc, glu, y, rows);
        }
    }

    /// SwiGLU's forward as its own pass, where the up projection's epilogue cannot hold it
    /// (an up projection with a bias): act = silu(gate) * up.
    fn swiglu_unfused_fwd(&self, enc: &mut Encoder, glu: Option<SwigluEpilogue>, up: &Tensor, rows: usize) {
        if let Some(SwigluEpilogue::Forward { gate, act }) = glu {
            swiglu::forward(enc, gate, up, act, rows * self.cfg.ffn);
        }
    }

    /// dx [+]= dy W^T (when `dx` is given), and the weight/bias gradients when trainable;
    /// with a LoRA adapter also dA, dB and the adapter's share of dx.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        enc: &mut Encoder,
        l: &LinearP,
        rows: usize,
        dy: &Tensor,
        x: &Tensor,
        dx: Option<(&Tensor, bool)>,
        lora: Option<LoraIo>,
        red: &Tensor,
    ) {
        self.linear_bwd_glu(enc, l, rows, dy, x, dx, None, None, lora, red)
    }

    /// `linear_bwd`, and with `glu` (a gated MLP's down projection) SwiGLU's backward
    /// after it: `dx` (overwritten) receives dgate and `glu.dup` dup instead of the
    /// projection's input gradient dact, in the base product's epilogue where it can
    /// (else through `glu.dact` and a SwiGLU pass). With `sib_g` (a sibling adapter, see
    /// `lora_siblings`), the adapter's g is written there and its dA left to the caller.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd_glu(
        &self,
        enc: &mut Encoder,
        l: &LinearP,
        rows: usize,
        dy: &Tensor,
        x: &Tensor,
        dx: Option<(&Tensor, bool)>,
        glu: Option<GluBwd>,
        sib_g: Option<&Tensor>,
        lora: Option<LoraIo>,
        red: &Tensor,
    ) {
        let p = &self.params;
        let lin = self.lin(l, rows);
        let w = self.matrix(l.w);
        debug_assert!(glu.is_none() || dx.is_some_and(|(_, acc)| !acc), "SwiGLU's gradients are overwritten");
        let swiglu = glu.map(|g| SwigluEpilogue::Backward { gate: g.gate, up: g.up, dup: g.dup });
        let Some((lp, io)) = Self::lora_io(l, lora) else {
            if let Some((dx, acc)) = dx {
                lin.backward_input_with(enc, dy, w.get(), Extras { swiglu, ..Default::default() }, dx, acc);
            }
            self.linear_bwd_weight(enc, l, lin, dy, x, red);
            return;
        };
        let (r, s, (fi, fo)) = (lp.rank, lp.scale, (l.fan_in, l.fan_out));
        let (u, g) = (&io.acts.u[lp.site], sib_g.unwrap_or(&io.acts.g));
        let (a, b) = (p.weight(lp.a), p.weight(lp.b));
        let mask = self.lora_mask(lp, io.salt).zip(io.acts.xd.as_ref());
        // g(rows, R) = dy(rows, out) . B(out, R), and dB(out, R) += s * dy^T . u with it
        // in one dispatch where the kernel table allows (`lora_grad::applies`).
        let db = p.grad(lp.b);
        let db_fused = match &db {
            Some(db) if lora_grad::applies(enc.gpu(), r) => {
                lora_grad::backward(enc, (rows, fo, r), s, dy, &b, u, g, db);
                true
            }
            _ => {
                matmul(enc, (rows, r, fo), dy, Op::N, &b, Op::N, None, None, g, false);
                false
            }
        };
        // dx(rows, in) [+]= dy W + drop'(s * g . A): without dropout the adapter's share
        // rides in the base product's epilogue; with it, it goes through the mask first.
        if let Some((dx, acc)) = dx {
            match mask {
                Some(((m, salts), xd)) => {
                    // SwiGLU after the dropout's share: dact first, then its own pass.
                    let dact = glu.map_or(dx, |gl| gl.dact);
                    lin.backward_input(enc, dy, w.get(), dact, acc);
                    matmul_scaled(enc, (rows, fi, r), s, g, Op::N, &a, Op::N, None, None, xd, false);
                    dropout::backward_salted(enc, &m, Some(salts), xd, dact, rows * fi, true);
                    if let Some(gl) = glu {
                        swiglu::backward(enc, gl.gate, gl.up, dact, dx, gl.dup, rows * fi);
                    }
                }
                None => {
                    let lora = LoraEpilogue { u: g, b: &a, b_t: true, rank: r, scale: s };
                    let ex = Extras { lora: Some(lora), swiglu, ..Default::default() };
                    lin.backward_input_with(enc, dy, w.get(), ex, dx, acc);
                }
            }
        }
        self.linear_bwd_weight(enc, l, lin, dy, x, red);
        // dB(out, R) += s * dy^T . u, K = rows split across workgroups through `red` on GPUs
        // where `k_ranges` says so (also dA below, and full fine-tuning's dW).
        let (adapter, [da_p, db_p]) = (Adapter::of(enc.gpu()), lora::grad_products(l, r));
        if let Some(db) = db.filter(|_| !db_fused) {
            let k_split = Some(db_p.split(adapter, rows, red));
            matmul_ex(enc, (fo, r, rows), s, dy, Op::T, u, Op::N, Extras { k_split, ..Default::default() }, &db, true);
        }
        if let Some(da) = p.grad(lp.a).filter(|_| sib_g.is_none()) {
            // dA(R, in) += s * g^T . drop(x), the dropped input rebuilt from its mask.
            let xin = match mask {
                Some(((m, salts), xd)) => {
                    dropout::forward_salted(enc, &m, Some(salts), x, xd, rows * fi);
                    xd
                }
                None => x,
            };
            // M is the rank: K (the rows) may be split (`ops::matmul::choose`).
            let k_split = Some(da_p.split(adapter, rows, red));
            let ex = Extras { split_k: da_p.split_k, k_split, ..Default::default() };
            matmul_ex(enc, (r, fi, rows), s, g, Op::T, xin, Op::N, ex, &da, true);
        }
    }

    /// The base layer's weight and bias gradients, when trainable (full fine-tuning); the
    /// bias in two stages through the workspace's reduction scratch `red`.
    fn linear_bwd_weight(&self, enc: &mut Encoder, l: &LinearP, lin: Linear, dy: &Tensor, x: &Tensor, red: &Tensor) {
        let p = &self.params;
        if let Some(dw) = p.grad(l.w) {
            lin.backward_weight(enc, dy, x, &dw, None, Some(red));
        }
        if let Some(db) = l.b.and_then(|b| p.grad(b)) {
            bias::backward(enc, lin.rows, l.fan_out, dy, &db, Some(red), true);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm_fwd(
        &self,
        enc: &mut Encoder,
        n: &NormP,
        rows: usize,
        x: &Tensor,
        y: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
    ) {
        let (p, c, eps) = (&self.params, self.cfg.hidden, self.cfg.norm_eps);
        match n.b {
            Some(b) => layernorm::forward(enc, x, &p.weight(n.w), &p.weight(b), y, mean, rstd, rows, c, eps),
            None => rmsnorm::forward_scaled(enc, x, &p.weight(n.w), self.norm_scale(), y, false, rstd, rows, c, eps),
        }
    }

    /// How the RMSNorm weights apply: (1 + w) for Gemma 3, w for the others.
    fn norm_scale(&self) -> Scale {
        if self.cfg.arch == Arch::Gemma3 {
            Scale::OnePlusW
        } else {
            Scale::W
        }
    }

    /// Gemma 3's post-norms: y(rows, C) += rmsnorm(x) (1 + w), x the sublayer's output and
    /// y the residual stream; rstd (rows) saved for the backward.
    #[allow(clippy::too_many_arguments)]
    fn post_norm_fwd(&self, enc: &mut Encoder, n: &NormP, rows: usize, x: &Tensor, y: &Tensor, rstd: &Tensor) {
        let (p, c, eps) = (&self.params, self.cfg.hidden, self.cfg.norm_eps);
        rmsnorm::forward_scaled(enc, x, &p.weight(n.w), self.norm_scale(), y, true, rstd, rows, c, eps);
    }

    /// `post_norm_fwd` in reverse: dx(rows, C) (overwritten) from dy, the residual
    /// stream's gradient (which passes to the residual unchanged, left to the caller).
    #[allow(clippy::too_many_arguments)]
    fn post_norm_bwd(
        &self,
        enc: &mut Encoder,
        n: &NormP,
        rows: usize,
        x: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        red: &Tensor,
    ) {
        let (p, c) = (&self.params, self.cfg.hidden);
        let (w, dw) = (p.weight(n.w), p.grad(n.w));
        rmsnorm::backward_scaled(enc, x, &w, self.norm_scale(), rstd, dy, dx, false, dw.as_ref(), Some(red), rows, c);
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_bwd(
        &self,
        enc: &mut Encoder,
        n: &NormP,
        rows: usize,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
        acc: bool,
        red: &Tensor,
    ) {
        let (p, c) = (&self.params, self.cfg.hidden);
        let dw = p.grad(n.w);
        match n.b {
            Some(b) => {
                let db = p.grad(b);
                let (dw, db) = (dw.as_ref(), db.as_ref());
                layernorm::backward(enc, x, &p.weight(n.w), mean, rstd, dy, dx, acc, dw, db, Some(red), rows, c)
            }
            None => {
                let (w, scale) = (p.weight(n.w), self.norm_scale());
                rmsnorm::backward_scaled(enc, x, &w, scale, rstd, dy, dx, acc, dw.as_ref(), Some(red), rows, c)
            }
        }
    }

    /// Qwen3's per-head RMSNorm: y(rows*heads, D) = rmsnorm of each head's row of x
    /// (rows, heads*D) with the weight w(D), the same kernel as the hidden-size norms over
    /// rows of D; rstd (rows*heads) saved for the backward.
    #[allow(clippy::too_many_arguments)]
    fn head_norm_fwd(
        &self,
        enc: &mut Encoder,
        n: &NormP,
        rows: usize,
        heads: usize,
        x: &Tensor,
        y: &Tensor,
        rstd: &Tensor,
    ) {
        let (d, eps) = (self.cfg.head_dim, self.cfg.norm_eps);
        let (w, scale) = (self.params.weight(n.w), self.norm_scale());
        rmsnorm::forward_scaled(enc, x, &w, scale, y, false, rstd, rows * heads, d, eps);
    }

    /// `head_norm_fwd` in reverse: dx (rows, heads*D) overwritten from dy, dw(D) added.
    #[allow(clippy::too_many_arguments)]
    fn head_norm_bwd(
        &self,
        enc: &mut Encoder,
        n: &NormP,
        rows: usize,
        heads: usize,
        x: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
        dx: &Tensor,
    ) {
        let (p, d) = (&self.params, self.cfg.head_dim);
        let dw = p.grad(n.w);
        // One stage: the workspace's reduction scratch is not passed down to the head norms.
        let (w, scale) = (p.weight(n.w), self.norm_scale());
        rmsnorm::backward_scaled(enc, x, &w, scale, rstd, dy, dx, false, dw.as_ref(), None, rows * heads, d);
    }

    /// Block `blk`'s causal attention over the micro-batch: Gemma 3's local layers see a
    /// sliding window, and its scores scale by query_pre_attn_scalar^-0.5.
    fn attn_shape(&self, inp: &Inputs, blk: &BlockP) -> AttnShape {
        let c = &self.cfg;
        let (window, scale) = self.attn_window_scale(blk);
        AttnShape { b: inp.b, t: inp.t, h: c.heads, hk: c.kv_heads, d: c.head_dim, window, scale }
    }

    /// Block `blk`'s attention window (None: every earlier key) and score scale (None:
    /// 1/sqrt(D)), shared by training's attention and the decoder's.
    pub(crate) fn attn_window_scale(&self, blk: &BlockP) -> (Option<usize>, Option<f32>) {
        match &self.cfg.gemma {
            Some(g) => (blk.sliding.then_some(g.window), Some(g.attn_scale)),
            None => (None, None),
        }
    }

    /// Block `blk`'s RoPE table: Gemma 3's local layers have their own base.
    fn rope_of(&self, blk: &BlockP) -> Option<&RopeTable> {
        if blk.sliding {
            self.rope_local.as_ref()
        } else {
            self.rope.as_ref()
        }
    }

    /// Gemma 3's embedding scale (sqrt(C) in f32); 1 for the others.
    fn embed_scale(&self) -> f32 {
        self.cfg.gemma.as_ref().map_or(1.0, |g| g.embed_scale)
    }

    /// x(rows, C) = the embeddings of the token ids `ids` (rows), plus GPT-2's learned
    /// position embeddings at the positions `pos` (rows).
    pub(crate) fn embed_fwd(&self, enc: &mut Encoder, rows: usize, ids: &Tensor, pos: &Tensor, x: &Tensor) {
        let p = &self.params;
        let wpe = self.tree.wpe.map(|w| p.weight(w));
        let pos = wpe.as_ref().map(|w| (pos, w));
        let scale = self.embed_scale();
        match p.compact(self.tree.wte) {
            Some(wte) => embedding::forward_compact_scaled(enc, ids, &wte, scale, pos, x, rows),
            None => embedding::forward_scaled(enc, ids, &p.weight(self.tree.wte), scale, pos, x, rows, self.cfg.hidden),
        }
    }

    /// The embeddings' gradients from dx(rows, C), the gradient of `embed_fwd`'s output
    /// (the rows grouped by token id and by position: `Inputs::by_id`, `Inputs::by_pos`).
    fn embed_bwd(&self, enc: &mut Encoder, inp: &Inputs, dx: &Tensor, red: &Tensor) {
        let (p, c) = (&self.params, self.cfg.hidden);
        if let (Some(dw), Some(idx)) = (p.grad(self.tree.wte), &inp.by_id) {
            embedding::backward_scaled(enc, idx, dx, self.embed_scale(), &dw, red, c);
        }
        if let (Some(wpe), Some(idx)) = (self.tree.wpe, &inp.by_pos) {
            if let Some(dw) = p.grad(wpe) {
                embedding::backward(enc, idx, dx, &dw, red, c);
            }
        }
    }

    /// Block `blk`'s q, k, v (rows, H*D / Hk*D) from its normed input `x` (rows, C), RoPE
    /// applied at the positions `pos` (rows). GPT-2 projects into `qkv` (rows, 3C) first;
    /// Qwen3 projects q and k into `qkn`'s buffers and normalizes each head into q, k.
    #[allow(clippy::too_many_arguments)]
    fn qkv_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        qkv: Option<&Tensor>,
        qkn: Option<&QkNormActs>,
        [q, k, v]: [&Tensor; 3],
        pos: &Tensor,
        lio: Option<LoraIo>,
    ) {
        let cfg = &self.cfg;
        match &blk.attn {
            AttnP::Separate { q: wq, k: wk, v: wv } => {
                match (&blk.qk_norm, qkn, self.siblings_fwd(enc, &[wq, wk, wv], rows, x, lio)) {
                    (Some((qn, kn)), Some(a), lio) => {
                        self.linear_fwd(enc, wq, rows, x, None, &a.q_raw, lio);
                        self.head_norm_fwd(enc, qn, rows, cfg.heads, &a.q_raw, q, &a.rstd_q);
                        self.linear_fwd(enc, wk, rows, x, None, &a.k_raw, lio);
                        self.head_norm_fwd(enc, kn, rows, cfg.kv_heads, &a.k_raw, k, &a.rstd_k);
                        self.linear_fwd(enc, wv, rows, x, None, v, lio);
                    }
                    (Some(_), None, _) => panic!("q/k norms need their activation buffers (LayerActs::qk_norm)"),
                    (None, _, lio) => {
                        self.linear_fwd(enc, wq, rows, x, None, q, lio);
                        self.linear_fwd(enc, wk, rows, x, None, k, lio);
                        self.linear_fwd(enc, wv, rows, x, None, v, lio);
                    }
                }
            }
            AttnP::Fused { c_attn } => {
                let c = cfg.hidden;
                let qkv = qkv.expect("GPT-2's fused projection needs a (rows, 3C) buffer");
                self.linear_fwd(enc, c_attn, rows, x, None, qkv, lio);
                for (i, dst) in [q, k, v].into_iter().enumerate() {
                    copy2d::copy2d(enc, qkv, 3 * c, i * c, dst, c, 0, rows, c);
                }
            }
        }
        if let Some(table) = self.rope_of(blk) {
            rope::forward_qk(enc, (q, cfg.heads), (k, cfg.kv_heads), pos, table, rows, cfg.head_dim);
        }
    }

    /// `qkv_fwd` in reverse: dx (rows, C) = the gradient of the normed input from dq, dk,
    /// dv (RoPE undone in place; GPT-2 merges them into `dqkv` (rows, 3C) first), and the
    /// projections' gradients. The projections' input gradients are summed into dx in
    /// the forward's order (q, k, v), as the bit-identity of the sums requires. Qwen3's
    /// per-head norms are undone between RoPE and the projections, into `g.dq_raw`,
    /// `g.dk_raw`.
    #[allow(clippy::too_many_arguments)]
    fn qkv_bwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        qkn: Option<&QkNormActs>,
        g: &Grads,
        pos: &Tensor,
        dx: &Tensor,
        lio: Option<LoraIo>,
        red: &Tensor,
    ) {
        let cfg = &self.cfg;
        let (dq, dk, dv) = (&g.dq, &g.dk, &g.dv);
        if let Some(table) = self.rope_of(blk) {
            rope::backward_qk(enc, (dq, cfg.heads), (dk, cfg.kv_heads), pos, table, rows, cfg.head_dim);
        }
        match &blk.attn {
            AttnP::Separate { q: wq, k: wk, v: wv } => {
                let (dq, dk) = match (&blk.qk_norm, qkn, &g.dq_raw, &g.dk_raw) {
                    (Some((qn, kn)), Some(a), Some(dq_raw), Some(dk_raw)) => {
                        self.head_norm_bwd(enc, qn, rows, cfg.heads, &a.q_raw, &a.rstd_q, dq, dq_raw);
                        self.head_norm_bwd(enc, kn, rows, cfg.kv_heads, &a.k_raw, &a.rstd_k, dk, dk_raw);
                        (dq_raw, dk_raw)
                    }
                    (Some(_), ..) => panic!("q/k norms need their activation and gradient buffers"),
                    (None, ..) => (dq, dk),
                };
                self.siblings_bwd(enc, &[wq, wk, wv], rows, &[dq, dk, dv], x, dx, lio, red);
            }
            AttnP::Fused { c_attn } => {
                let c = cfg.hidden;
                let dqkv = g.dqkv.as_ref().expect("GPT-2's fused projection needs a (rows, 3C) gradient buffer");
                for (i, src) in [dq, dk, dv].into_iter().enumerate() {
                    copy2d::copy2d(enc, src, c, 0, dqkv, 3 * c, i * c, rows, c);
                }
                self.linear_bwd(enc, c_attn, rows, dqkv, x, Some((dx, false)), lio, red);
            }
        }
    }

    /// out = [resid +] attn(x) W_o: x (rows, C) normed; q, k, v (and GPT-2's qkv) and the
    /// attention output o (rows, H*D) saved for the backward; `attend` says which keys the
    /// queries see (the micro-batch's own, or a decoder's cache).
    #[allow(clippy::too_many_arguments)]
    fn attn_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        qkv: Option<&Tensor>,
        qkn: Option<&QkNormActs>,
        [q, k, v]: [&Tensor; 3],
        o: &Tensor,
        resid: Option<&Tensor>,
        out: &Tensor,
        pos: &Tensor,
        attend: &Attend,
        lio: Option<LoraIo>,
    ) {
        self.qkv_fwd(enc, blk, rows, x, qkv, qkn, [q, k, v], pos, lio);
        match attend {
            Attend::Causal(Causal { shape, seg, lse }) => attention::forward(enc, shape, q, k, v, seg, o, lse),
            Attend::Cached { shape, k_cache, v_cache, visible } => {
                // The new rows' K/V join the cache first, so each query sees its own key.
                attention::kv_append(enc, shape, k, v, pos, k_cache, v_cache);
                attention::decode(enc, shape, q, k_cache, v_cache, pos, o, *visible);
            }
        }
        self.linear_fwd(enc, &blk.o, rows, o, resid, out, lio);
    }

    /// `attn_fwd` in reverse, from dout (rows, C), the gradient of its output: dx (rows,
    /// C) = the gradient of the normed input (overwritten), and the projections'
    /// gradients; `g` holds the scratch (d_o, dq, dk, dv, dqkv). The residual's
    /// gradient is dout itself, left to the caller. Only the micro-batch's causal
    /// attention has a backward.
    #[allow(clippy::too_many_arguments)]
    fn attn_bwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        qkn: Option<&QkNormActs>,
        [q, k, v]: [&Tensor; 3],
        o: &Tensor,
        dout: &Tensor,
        dx: &Tensor,
        g: &Grads,
        pos: &Tensor,
        causal: &Causal,
        lio: Option<LoraIo>,
    ) {
        let Causal { shape, seg, lse } = causal;
        let red = &g.reduce;
        self.linear_bwd(enc, &blk.o, rows, dout, o, Some((&g.d_o, false)), lio, red);
        attention::backward(enc, shape, q, k, v, seg, o, lse, &g.d_o, red, &g.dq, &g.dk, &g.dv);
        self.qkv_bwd(enc, blk, rows, x, qkn, g, pos, dx, lio, &g.reduce);
    }

    /// out = [resid +] mlp(x): x (rows, C) normed, h1/h2/act (rows, F) saved for the
    /// backward (h2 for the gated MLP only). Without `out` the output projection is skipped
    /// (a recomputing forward: the output is already there, and the backward needs only
    /// the projection's input `act`).
    #[allow(clippy::too_many_arguments)]
    fn mlp_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        h1: &Tensor,
        h2: Option<&Tensor>,
        act: &Tensor,
        resid: Option<&Tensor>,
        out: Option<&Tensor>,
        lio: Option<LoraIo>,
    ) {
        let f = self.cfg.ffn;
        match &blk.mlp {
            MlpP::Gated { gate, up, down } => {
                let h2 = h2.expect("the gated MLP needs its up-projection buffer");
                let sib = self.siblings_fwd(enc, &[gate, up], rows, x, lio);
                self.linear_fwd(enc, gate, rows, x, None, h1, sib);
                if self.cfg.arch == Arch::Gemma3 {
                    // Gemma's GeGLU (tanh GELU) where the others gate with SiLU: its own pass
                    // (the up projection's epilogue fuses SwiGLU only).
                    self.linear_fwd(enc, up, rows, x, None, h2, sib);
                    gelu::geglu_forward(enc, h1, h2, act, rows * f);
                } else {
                    // act = silu(h1) * h2 in the up projection's epilogue.
                    let glu = SwigluEpilogue::Forward { gate: h1, act };
                    self.linear_fwd_glu(enc, up, rows, x, None, h2, Some(glu), sib);
                }
                if let Some(out) = out {
                    self.linear_fwd(enc, down, rows, act, resid, out, lio);
                }
            }
            MlpP::Gelu { fc, proj } => {
                self.linear_fwd(enc, fc, rows, x, None, h1, lio);
                gelu::forward(enc, h1, act, rows * f);
                if let Some(out) = out {
                    self.linear_fwd(enc, proj, rows, act, resid, out, lio);
                }
            }
        }
    }

    /// `mlp_fwd` in reverse, from dout (rows, C), the gradient of its output: dx (rows, C)
    /// = the gradient of the normed input (overwritten), and the projections' gradients;
    /// `g` holds the scratch (dact, dh1, dh2). The residual's gradient is dout itself, left
    /// to the caller. The gated MLP sums its two input gradients into dx in the forward's
    /// order (gate, up), as the bit-identity of the sums requires.
    #[allow(clippy::too_many_arguments)]
    fn mlp_bwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        h1: &Tensor,
        h2: Option<&Tensor>,
        act: &Tensor,
        dout: &Tensor,
        dx: &Tensor,
        g: &Grads,
        lio: Option<LoraIo>,
    ) {
        let (f, red) = (self.cfg.ffn, &g.reduce);
        match &blk.mlp {
            MlpP::Gated { gate, up, down } => {
                let h2 = h2.expect("the gated MLP needs its up-projection buffer");
                if self.cfg.arch == Arch::Gemma3 {
                    self.linear_bwd(enc, down, rows, dout, act, Some((&g.dact, false)), lio, red);
                    gelu::geglu_backward(enc, h1, h2, &g.dact, &g.dh1, &g.dh2, rows * f);
                } else {
                    // dh1, dh2 from SwiGLU's backward in the down projection's epilogue.
                    let glu = GluBwd { gate: h1, up: h2, dact: &g.dact, dup: &g.dh2 };
                    self.linear_bwd_glu(enc, down, rows, dout, act, Some((&g.dh1, false)), Some(glu), None, lio, red);
                }
                self.siblings_bwd(enc, &[gate, up], rows, &[&g.dh1, &g.dh2], x, dx, lio, red);
            }
            MlpP::Gelu { fc, proj } => {
                self.linear_bwd(enc, proj, rows, dout, act, Some((&g.dact, false)), lio, red);
                gelu::backward(enc, h1, &g.dact, &g.dh1, rows * f);
                self.linear_bwd(enc, fc, rows, &g.dh1, x, Some((dx, false)), lio, red);
            }
        }
    }

    /// logits(rows, V) = x(rows, C) . lm_head^T (the final-normed hidden states); with
    /// Gemma 3's final soft-cap, cap * tanh(z / cap) of those products z, which go to `z`
    /// (rows, V) first (kept for the cap's backward).
    pub(crate) fn lm_head_fwd(&self, enc: &mut Encoder, rows: usize, x: &Tensor, z: Option<&Tensor>, logits: &Tensor) {
        let w = self.matrix(self.tree.lm_head);
        match (softcap_of(&self.cfg), z) {
            (Some(cap), Some(z)) => {
                self.lm_head(rows).forward(enc, x, w.get(), None, None, z, false);
                softcap::forward(enc, z, logits, cap, rows * self.cfg.vocab);
            }
            (Some(_), None) => panic!("a soft-capped head needs a buffer for the logits before the cap"),
            (None, _) => self.lm_head(rows).forward(enc, x, w.get(), None, None, logits, false),
        }
    }

    /// `lm_head_fwd` in reverse: dx(rows, C) from dlogits(rows, V) (overwritten), K = V
    /// split across workgroups on GPUs through the scratch `red` (`head_k_ranges`), and the
    /// LM head's gradient when it is trainable.
    fn lm_head_bwd(&self, enc: &mut Encoder, rows: usize, x: &Tensor, dlogits: &Tensor, dx: &Tensor, red: &Tensor) {
        let (p, head) = (&self.params, self.lm_head(rows));
        let ranges = head_k_ranges(&self.cfg, Adapter::of(enc.gpu()));
        let ex = Extras { k_split: Some(KSplit { scratch: red, ranges }), ..Default::default() };
        head.backward_input_with(enc, dlogits, self.matrix(self.tree.lm_head).get(), ex, dx, false);
        if let Some(dw) = p.grad(self.tree.lm_head) {
            head.backward_weight(enc, dlogits, x, &dw, None, None);
        }
    }

    fn lm_head(&self, rows: usize) -> Linear {
        Linear { rows, fan_in: self.cfg.hidden, fan_out: self.cfg.vocab, layout: WeightLayout::OutIn }
    }

    /// One block's forward: out = x_mid + mlp(ln2(x_mid)), x_mid = x + attn(ln1(x)), its
    /// activations saved into `a` (and the LoRA u of its adapters). Deterministic, so the
    /// backward can re-run it from `x` (activation checkpointing) and get the same bits.
    /// `out` may be `x` (the decoder's residual stream is one buffer).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn block_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        a: &LayerActs,
        out: &Tensor,
        pos: &Tensor,
        attend: &Attend,
        lio: Option<LoraIo>,
    ) {
        self.block_fwd_to(enc, blk, rows, x, a, Some(out), pos, attend, lio);
    }

    /// `block_fwd`, or without `out` the recomputing forward of activation checkpointing:
    /// every activation the backward reads, but not the block's output (already held,
    /// and read by no backward), so the MLP's output projection is skipped.
    #[allow(clippy::too_many_arguments)]
    fn block_fwd_to(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        a: &LayerActs,
        out: Option<&Tensor>,
        pos: &Tensor,
        attend: &Attend,
        lio: Option<LoraIo>,
    ) {
        let qkv = [&a.q, &a.k, &a.v];
        self.norm_fwd(enc, &blk.ln1, rows, x, &a.ln1, &a.mean1, &a.rstd1);
        let qkn = a.qk_norm.as_ref();
        let (ln1, h2) = (&a.ln1, a.h2.as_ref());
        match (&blk.post, &a.post) {
            // Gemma 3: x_mid = x + post_attn(attn(ln1(x))), out = x_mid + post_mlp(mlp(ln2(x_mid))),
            // each sublayer's output kept for its post-norm's backward.
            (Some((post_attn, post_mlp)), Some(pn)) => {
                let c = self.cfg.hidden;
                self.attn_fwd(
                    enc,
                    blk,
                    rows,
                    ln1,
                    a.qkv.as_ref(),
                    qkn,
                    qkv,
                    &a.o,
                    None,
                    &pn.attn_out,
                    pos,
                    attend,
                    lio,
                );
                copy2d::copy2d(enc, x, c, 0, &a.x_mid, c, 0, rows, c);
                self.post_norm_fwd(enc, post_attn, rows, &pn.attn_out, &a.x_mid, &pn.rstd_attn);
                self.norm_fwd(enc, &blk.ln2, rows, &a.x_mid, &a.ln2, &a.mean2, &a.rstd2);
                self.mlp_fwd(enc, blk, rows, &a.ln2, &a.h1, h2, &a.act, None, Some(&pn.mlp_out), lio);
                // The post-norm's rstd (read by its backward) comes from the pass that adds it
                // to the output, so a recompute writes the output too (see the backward).
                let out = out.expect("Gemma 3's recompute rewrites the block's output");
                copy2d::copy2d(enc, &a.x_mid, c, 0, out, c, 0, rows, c);
                self.post_norm_fwd(enc, post_mlp, rows, &pn.mlp_out, out, &pn.rstd_mlp);
            }
            (Some(_), None) => panic!("post-norms need their activation buffers (LayerActs::post)"),
            (None, _) => {
                self.attn_fwd(enc, blk, rows, ln1, a.qkv.as_ref(), qkn, qkv, &a.o, Some(x), &a.x_mid, pos, attend, lio);
                self.norm_fwd(enc, &blk.ln2, rows, &a.x_mid, &a.ln2, &a.mean2, &a.rstd2);
                self.mlp_fwd(enc, blk, rows, &a.ln2, &a.h1, h2, &a.act, Some(&a.x_mid), out, lio);
            }
        }
    }

    /// `block_fwd` in reverse, from its saved activations `a` and input `x`: `g.dres`
    /// holds the gradient of the block's output on entry and of its input `x` on return
    /// (each residual's gradient passes through it, the norms' input gradients are added
    /// to it); the block's parameter gradients are added.
    #[allow(clippy::too_many_arguments)]
    fn block_bwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        a: &LayerActs,
        g: &Grads,
        pos: &Tensor,
        causal: &Causal,
        lio: Option<LoraIo>,
    ) {
        let qkv = [&a.q, &a.k, &a.v];
        let (qkn, red) = (a.qk_norm.as_ref(), &g.reduce);
        // Gemma 3's post-norms first turn the residual's gradient into their sublayer's
        // output gradient (dpost); the others' sublayers see dres itself.
        let post = match (&blk.post, &a.post, &g.dpost) {
            (Some(norms), Some(pn), Some(dpost)) => Some((norms, pn, dpost)),
            (Some(_), ..) => panic!("post-norms need their activation and gradient buffers"),
            (None, ..) => None,
        };
        let dmlp = match post {
            Some(((_, post_mlp), pn, dpost)) => {
                self.post_norm_bwd(enc, post_mlp, rows, &pn.mlp_out, &pn.rstd_mlp, &g.dres, dpost, red);
                dpost
            }
            None => &g.dres,
        };
        self.mlp_bwd(enc, blk, rows, &a.ln2, &a.h1, a.h2.as_ref(), &a.act, dmlp, &g.dln, g, lio);
        self.norm_bwd(enc, &blk.ln2, rows, &a.x_mid, &a.mean2, &a.rstd2, &g.dln, &g.dres, true, red);
        let dattn = match post {
            Some(((post_attn, _), pn, dpost)) => {
                self.post_norm_bwd(enc, post_attn, rows, &pn.attn_out, &pn.rstd_attn, &g.dres, dpost, red);
                dpost
            }
            None => &g.dres,
        };
        self.attn_bwd(enc, blk, rows, &a.ln1, qkn, qkv, &a.o, dattn, &g.dln, g, pos, causal, lio);
        self.norm_bwd(enc, &blk.ln1, rows, x, &a.mean1, &a.rstd1, &g.dln, &g.dres, true, red);
    }

    /// One head chunk's forward over k loss rows (their rows of the last block's output
    /// listed in `loss_rows`): gather, final norm, logits (k, V).
    fn head_fwd(&self, enc: &mut Encoder, ws: &Workspace, k: usize, loss_rows: &Tensor, logits: &Tensor) {
        let (cfg, ln_f) = (&self.cfg, &self.tree.ln_f);
        gather::forward(enc, &ws.xs[cfg.layers], loss_rows, &ws.hg, k, cfg.hidden);
        self.norm_fwd(enc, ln_f, k, &ws.hg, &ws.hf, &ws.meanf, &ws.rstdf);
        let z = ws.zcap.as_ref().map(|z| z.view(0, k * cfg.vocab));
        self.lm_head_fwd(enc, k, &ws.hf, z.as_ref(), logits);
    }

    /// `head_fwd` in reverse, from its logits' gradient (k, V): the LM head, the final
    /// norm, and the scatter of its rows into the residual stream's gradient `ws.grads.dres`.
    fn head_bwd(&self, enc: &mut Encoder, ws: &Workspace, k: usize, loss_rows: &Tensor, dlogits: &Tensor) {
        let (cfg, ln_f) = (&self.cfg, &self.tree.ln_f);
        // Through the soft-cap: its input z (kept by the forward) becomes dz in place.
        let dz = match (softcap_of(cfg), &ws.zcap) {
            (Some(cap), Some(z)) => {
                let dz = z.view(0, k * cfg.vocab);
                softcap::backward(enc, &dz, dlogits, cap, k * cfg.vocab);
                Some(dz)
            }
            _ => None,
        };
        self.lm_head_bwd(enc, k, &ws.hf, dz.as_ref().unwrap_or(dlogits), &ws.dhf, &ws.grads.reduce);
        self.norm_bwd(enc, ln_f, k, &ws.hg, &ws.meanf, &ws.rstdf, &ws.dhf, &ws.dhg, false, &ws.grads.reduce);
        gather::scatter(enc, &ws.dhg, loss_rows, &ws.grads.dres, k, cfg.hidden);
    }

    /// Forward through the blocks, then the head over the N rows listed in `loss_rows`, in
    /// chunks (see `Head`). With `Head::Loss` or `Head::Train`, `ws.nll` then holds each
    /// row's NLL; with `Head::Logits`, `ws.logits` holds the logits.
    pub fn forward(&self, enc: &mut Encoder, ws: &Workspace, inp: &Inputs, head_kind: Head) {
        let cfg = &self.cfg;
        let (rows, c) = (inp.b * inp.t, cfg.hidden);
        let lio = LoraIo::of(ws, inp);
        self.embed_fwd(enc, rows, &inp.ids, &inp.pos, &ws.xs[0]);
        for (l, blk) in self.tree.blocks.iter().enumerate() {
            let (a, shape) = (ws.acts(l), self.attn_shape(inp, blk));
            let attend = Attend::Causal(Causal { shape, seg: &inp.seg, lse: &a.lse });
            self.block_fwd(enc, blk, rows, &ws.xs[l], a, &ws.xs[l + 1], &inp.pos, &attend, lio);
        }
        // Only the rows that carry loss go through the final norm, the LM head and the loss.
        let n = inp.n;
        if n == 0 {
            return;
        }
        assert!(
            head_kind != Head::Logits || ws.opts.all_logits,
            "Head::Logits needs a workspace that holds every row's logits (WorkspaceOpts::all_logits)"
        );
        let v = cfg.vocab;
        if head_kind == Head::Train {
            // The scatter of each chunk's gradient writes only its rows.
            fill::fill(enc, &ws.grads.dres, 0.0, rows * c);
        }
        let chunk = ws.head_chunk();
        for at in (0..n).step_by(chunk) {
            let k = chunk.min(n - at);
            // Views at a chunk's start: `at` is a multiple of 64, so every binding offset is a
            // multiple of 256 bytes.
            let loss_rows = inp.loss_rows.view(at, k);
            let logits = if ws.opts.all_logits { ws.logits.view(at * v, k * v) } else { ws.logits.view(0, k * v) };
            self.head_fwd(enc, ws, k, &loss_rows, &logits);
            if head_kind == Head::Logits {
                continue;
            }
            let (targets, weights, nll) = (inp.targets.view(at, k), inp.weights.view(at, k), ws.nll.view(at, k));
            // Overwrites the chunk's logits with their gradient.
            cross_entropy::forward_backward(enc, &logits, &targets, &weights, &nll, k, v);
            if head_kind == Head::Train {
                self.head_bwd(enc, ws, k, &loss_rows, &logits);
            }
        }
    }

    /// Backward after `forward` with `Head::Train` (same workspace and inputs), the
    /// forward's block loop read in reverse (the head's backward ran chunk by chunk in the
    /// forward, leaving the last block's output gradient in `ws.grads.dres`): adds every
    /// trainable parameter's gradient. With `WorkspaceOpts::recompute`, each block's
    /// forward is re-run from its saved input before its backward (the last block's
    /// activations are still there from the forward).
    pub fn backward(&self, enc: &mut Encoder, ws: &Workspace, inp: &Inputs) {
        if inp.n == 0 {
            return;
        }
        let rows = inp.b * inp.t;
        let lio = LoraIo::of(ws, inp);
        for (l, blk) in self.tree.blocks.iter().enumerate().rev() {
            let (a, x, shape) = (ws.acts(l), &ws.xs[l], self.attn_shape(inp, blk));
            let causal = Causal { shape, seg: &inp.seg, lse: &a.lse };
            if ws.opts.recompute && l + 1 < self.cfg.layers {
                // Leaves xs[l + 1] as it is (its bits would be the same). The adapters' u are
                // kept per site, so they are not recomputed.
                let attend = Attend::Causal(causal);
                let lio_re = lio.map(|io| LoraIo { u_ready: true, ..io });
                // Gemma 3's post-norms keep their rstd from the pass that writes the output:
                // there xs[l + 1] is rewritten with the bits it already holds.
                let out = blk.post.is_some().then_some(&ws.xs[l + 1]);
                self.block_fwd_to(enc, blk, rows, x, a, out, &inp.pos, &attend, lio_re);
            }
            self.block_bwd(enc, blk, rows, x, a, &ws.grads, &inp.pos, &causal, lio);
        }
        self.embed_bwd(enc, inp, &ws.grads.dres, &ws.grads.reduce);
    }
}
