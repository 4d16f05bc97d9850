//! One forward and backward pass of a micro-batch. The backward is the forward read in
//! reverse; every parameter gradient is ADDED into its gradient buffer, so micro-batches
//! accumulate and the caller zeroes the gradients once per optimizer step.

use super::arch::{AttnP, BlockP, LinearP, MlpP, NormP};
use super::lora::LoraP;
use super::workspace::{Inputs, LayerActs, LoraActs, Workspace};
use super::Model;
use crate::gpu::{Encoder, Tensor};
use crate::ops::dropout::{self, Mask};
use crate::ops::matmul::{matmul, matmul_scaled, Linear, Op};
use crate::ops::{attention, copy2d, cross_entropy, embedding, fill, gather, gelu, layernorm, rmsnorm, rope, swiglu};

/// What a layer with a LoRA adapter needs besides its input and output: the workspace's
/// adapter buffers (`Workspace::lora`, made by `Model::workspace`) and the dropout salt
/// (None: no dropout, as in scoring and generation).
#[derive(Clone, Copy)]
pub struct LoraIo<'a> {
    pub acts: &'a LoraActs,
    pub salt: Option<u32>,
}

impl<'a> LoraIo<'a> {
    pub fn of(ws: &'a Workspace, inp: &Inputs) -> Option<LoraIo<'a>> {
        ws.lora.as_ref().map(|acts| LoraIo { acts, salt: inp.dropout_salt })
    }
}

/// What the forward pass ends with. The head runs over the N loss rows in chunks of
/// `ws.head_chunk()` rows (gather, final norm, logits, loss), so the (N, V) logits are held
/// whole only when asked for (`WorkspaceOpts::all_logits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Fused softmax + cross-entropy: per-row NLL in `ws.nll` (scoring, no gradients).
    Loss,
    /// Just the logits (scoring, generation, parity tests): `ws.logits` holds the (N, V)
    /// logits of every loss row; the workspace needs `WorkspaceOpts::all_logits`.
    Logits,
    /// Training: the loss as with `Loss`, and each chunk's head backward right after its
    /// loss (the logits' gradient never outlives its chunk): the LM head's and the final
    /// norm's gradients are added, and `ws.grads.dres` receives the gradient of the last
    /// block's output. `Model::backward` continues from there.
    Train,
}

impl Model {
    fn lin(&self, l: &LinearP, rows: usize) -> Linear {
        Linear { rows, fan_in: l.fan_in, fan_out: l.fan_out, layout: l.layout }
    }

    /// The dropout mask of adapter `lp` for this micro-batch, when dropout is on.
    fn lora_mask(&self, lp: &LoraP, salt: Option<u32>) -> Option<Mask> {
        let cfg = self.lora.as_ref()?;
        let salt = salt?;
        (cfg.dropout > 0.0).then_some(Mask {
            p: cfg.dropout,
            seed: (cfg.seed ^ (cfg.seed >> 32)) as u32,
            salt,
            site: lp.site as u32,
        })
    }

    fn lora_io<'l, 'a>(l: &'l LinearP, lora: Option<LoraIo<'a>>) -> Option<(&'l LoraP, LoraIo<'a>)> {
        let lp = l.lora.as_ref()?;
        let io = lora.expect("a layer with a LoRA adapter needs the workspace's adapter buffers (Model::workspace)");
        Some((lp, io))
    }

    /// y = x W [+ b] [+ resid] [+ s * (drop(x) A^T) B^T with a LoRA adapter, saving
    /// u = drop(x) A^T (rows, R) for the backward].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_fwd(
        &self,
        enc: &mut Encoder,
        l: &LinearP,
        rows: usize,
        x: &Tensor,
        resid: Option<&Tensor>,
        y: &Tensor,
        lora: Option<LoraIo>,
    ) {
        let p = &self.params;
        let b = l.b.map(|b| p.weight(b));
        self.lin(l, rows).forward(enc, x, &p.weight(l.w), b.as_ref(), resid, y, false);
        if let Some((lp, io)) = Self::lora_io(l, lora) {
            let (r, u) = (lp.rank, &io.acts.u[lp.site]);
            let xin = match (self.lora_mask(lp, io.salt), io.acts.xd.as_ref()) {
                (Some(mask), Some(xd)) => {
                    dropout::forward(enc, &mask, x, xd, rows * l.fan_in);
                    xd
                }
                _ => x,
            };
            // u(rows, R) = drop(x)(rows, in) . A^T;  y(rows, out) += s * u . B^T
            matmul(enc, (rows, r, l.fan_in), xin, Op::N, &p.weight(lp.a), Op::T, None, None, u, false);
            matmul_scaled(enc, (rows, l.fan_out, r), lp.scale, u, Op::N, &p.weight(lp.b), Op::T, None, None, y, true);
        }
    }

    /// dx [+]= dy W^T (when `dx` is given), and the weight/bias gradients when trainable;
    /// with a LoRA adapter also dA, dB and the adapter's share of dx.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_bwd(
        &self,
        enc: &mut Encoder,
        l: &LinearP,
        rows: usize,
        dy: &Tensor,
        x: &Tensor,
        dx: Option<(&Tensor, bool)>,
        lora: Option<LoraIo>,
    ) {
        let p = &self.params;
        let lin = self.lin(l, rows);
        if let Some((dx, acc)) = dx {
            lin.backward_input(enc, dy, &p.weight(l.w), dx, acc);
        }
        if let Some(dw) = p.grad(l.w) {
            let db = l.b.and_then(|b| p.grad(b));
            lin.backward_weight(enc, dy, x, &dw, db.as_ref());
        }
        let Some((lp, io)) = Self::lora_io(l, lora) else { return };
        let (r, s, (fi, fo)) = (lp.rank, lp.scale, (l.fan_in, l.fan_out));
        let (u, g) = (&io.acts.u[lp.site], &io.acts.g);
        let (a, b) = (p.weight(lp.a), p.weight(lp.b));
        let mask = self.lora_mask(lp, io.salt).zip(io.acts.xd.as_ref());
        // g(rows, R) = dy(rows, out) . B(out, R)
        matmul(enc, (rows, r, fo), dy, Op::N, &b, Op::N, None, None, g, false);
        // dB(out, R) += s * dy^T . u
        if let Some(db) = p.grad(lp.b) {
            matmul_scaled(enc, (fo, r, rows), s, dy, Op::T, u, Op::N, None, None, &db, true);
        }
        if let Some(da) = p.grad(lp.a) {
            // dA(R, in) += s * g^T . drop(x), the dropped input rebuilt from its mask.
            let xin = match mask {
                Some((m, xd)) => {
                    dropout::forward(enc, &m, x, xd, rows * fi);
                    xd
                }
                None => x,
            };
            matmul_scaled(enc, (r, fi, rows), s, g, Op::T, xin, Op::N, None, None, &da, true);
        }
        // dx(rows, in) += drop'(s * g . A)
        if let Some((dx, _)) = dx {
            match mask {
                Some((m, xd)) => {
                    matmul_scaled(enc, (rows, fi, r), s, g, Op::N, &a, Op::N, None, None, xd, false);
                    dropout::backward(enc, &m, xd, dx, rows * fi, true);
                }
                None => matmul_scaled(enc, (rows, fi, r), s, g, Op::N, &a, Op::N, None, None, dx, true),
            }
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
            None => rmsnorm::forward(enc, x, &p.weight(n.w), y, rstd, rows, c, eps),
        }
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
    ) {
        let (p, c) = (&self.params, self.cfg.hidden);
        let dw = p.grad(n.w);
        match n.b {
            Some(b) => {
                let db = p.grad(b);
                layernorm::backward(enc, x, &p.weight(n.w), mean, rstd, dy, dx, acc, dw.as_ref(), db.as_ref(), rows, c)
            }
            None => rmsnorm::backward(enc, x, &p.weight(n.w), rstd, dy, dx, acc, dw.as_ref(), rows, c),
        }
    }

    fn attn_shape(&self, inp: &Inputs) -> attention::AttnShape {
        let c = &self.cfg;
        attention::AttnShape { b: inp.b, t: inp.t, h: c.heads, hk: c.kv_heads, d: c.head_dim }
    }

    /// Block `blk`'s q, k, v (rows, H*D / Hk*D) from its normed input `x` (rows, C), RoPE
    /// applied at the positions `pos` (rows). GPT-2 projects into `qkv` (rows, 3C) first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn qkv_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        qkv: Option<&Tensor>,
        [q, k, v]: [&Tensor; 3],
        pos: &Tensor,
        lio: Option<LoraIo>,
    ) {
        let cfg = &self.cfg;
        match &blk.attn {
            AttnP::Separate { q: wq, k: wk, v: wv } => {
                self.linear_fwd(enc, wq, rows, x, None, q, lio);
                self.linear_fwd(enc, wk, rows, x, None, k, lio);
                self.linear_fwd(enc, wv, rows, x, None, v, lio);
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
        if let Some(table) = &self.rope {
            rope::forward(enc, q, pos, table, rows, cfg.heads, cfg.head_dim);
            rope::forward(enc, k, pos, table, rows, cfg.kv_heads, cfg.head_dim);
        }
    }

    /// out = resid + mlp(x): x (rows, C) normed, h1/h2/act (rows, F) scratch (h2 for the
    /// gated MLP only).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mlp_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        rows: usize,
        x: &Tensor,
        h1: &Tensor,
        h2: Option<&Tensor>,
        act: &Tensor,
        resid: &Tensor,
        out: &Tensor,
        lio: Option<LoraIo>,
    ) {
        let f = self.cfg.ffn;
        match &blk.mlp {
            MlpP::Gated { gate, up, down } => {
                let h2 = h2.expect("the gated MLP needs its up-projection buffer");
                self.linear_fwd(enc, gate, rows, x, None, h1, lio);
                self.linear_fwd(enc, up, rows, x, None, h2, lio);
                swiglu::forward(enc, h1, h2, act, rows * f);
                self.linear_fwd(enc, down, rows, act, Some(resid), out, lio);
            }
            MlpP::Gelu { fc, proj } => {
                self.linear_fwd(enc, fc, rows, x, None, h1, lio);
                gelu::forward(enc, h1, act, rows * f);
                self.linear_fwd(enc, proj, rows, act, Some(resid), out, lio);
            }
        }
    }

    /// logits(rows, V) = x(rows, C) . lm_head^T (the final-normed hidden states).
    pub(crate) fn lm_head_fwd(&self, enc: &mut Encoder, rows: usize, x: &Tensor, logits: &Tensor) {
        let cfg = &self.cfg;
        let head =
            Linear { rows, fan_in: cfg.hidden, fan_out: cfg.vocab, layout: crate::ops::matmul::WeightLayout::OutIn };
        head.forward(enc, x, &self.params.weight(self.tree.lm_head), None, None, logits, false);
    }

    /// One block's forward: `out` = block(`x`), its activations saved into `a` (and the
    /// LoRA u of its adapters). Deterministic, so the backward can re-run it from `x`
    /// (activation checkpointing) and get the same bits.
    #[allow(clippy::too_many_arguments)]
    fn block_fwd(
        &self,
        enc: &mut Encoder,
        blk: &BlockP,
        a: &LayerActs,
        x: &Tensor,
        out: &Tensor,
        inp: &Inputs,
        lio: Option<LoraIo>,
    ) {
        let rows = inp.b * inp.t;
        let shape = self.attn_shape(inp);
        self.norm_fwd(enc, &blk.ln1, rows, x, &a.ln1, &a.mean1, &a.rstd1);
        self.qkv_fwd(enc, blk, rows, &a.ln1, a.qkv.as_ref(), [&a.q, &a.k, &a.v], &inp.pos, lio);
        attention::forward(enc, &shape, &a.q, &a.k, &a.v, &inp.seg, &a.o, &a.lse);
        self.linear_fwd(enc, &blk.o, rows, &a.o, Some(x), &a.x_mid, lio);
        self.norm_fwd(enc, &blk.ln2, rows, &a.x_mid, &a.ln2, &a.mean2, &a.rstd2);
        self.mlp_fwd(enc, blk, rows, &a.ln2, &a.h1, a.h2.as_ref(), &a.act, &a.x_mid, out, lio);
    }

    /// Forward through the blocks, then the head over the N rows listed in `loss_rows`, in
    /// chunks (see `Head`). With `Head::Loss` or `Head::Train`, `ws.nll` then holds each
    /// row's NLL; with `Head::Logits`, `ws.logits` holds the logits.
    pub fn forward(&self, enc: &mut Encoder, ws: &Workspace, inp: &Inputs, head_kind: Head) {
        let cfg = &self.cfg;
        let p = &self.params;
        let rows = inp.b * inp.t;
        let c = cfg.hidden;
        let wpe = self.tree.wpe.map(|w| p.weight(w));
        let pos = wpe.as_ref().map(|w| (&inp.pos, w));
        embedding::forward(enc, &inp.ids, &p.weight(self.tree.wte), pos, &ws.xs[0], rows, c);
        let lio = LoraIo::of(ws, inp);
        for (l, blk) in self.tree.blocks.iter().enumerate() {
            self.block_fwd(enc, blk, ws.acts(l), &ws.xs[l], &ws.xs[l + 1], inp, lio);
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
            gather::forward(enc, &ws.xs[cfg.layers], &loss_rows, &ws.hg, k, c);
            self.norm_fwd(enc, &self.tree.ln_f, k, &ws.hg, &ws.hf, &ws.meanf, &ws.rstdf);
            self.lm_head_fwd(enc, k, &ws.hf, &logits);
            if head_kind == Head::Logits {
                continue;
            }
            let (targets, weights, nll) = (inp.targets.view(at, k), inp.weights.view(at, k), ws.nll.view(at, k));
            cross_entropy::forward_backward(enc, &logits, &targets, &weights, &nll, k, v);
            if head_kind == Head::Train {
                self.head_bwd(enc, ws, k, &logits, &loss_rows);
            }
        }
    }

    /// One head chunk's backward, from its logits' gradient (k, V): the LM head, the final
    /// norm, and the scatter of its rows into the residual stream's gradient.
    fn head_bwd(&self, enc: &mut Encoder, ws: &Workspace, k: usize, dlogits: &Tensor, loss_rows: &Tensor) {
        let (cfg, p) = (&self.cfg, &self.params);
        let head =
            Linear { rows: k, fan_in: cfg.hidden, fan_out: cfg.vocab, layout: crate::ops::matmul::WeightLayout::OutIn };
        head.backward_input(enc, dlogits, &p.weight(self.tree.lm_head), &ws.dhf, false);
        if let Some(dw) = p.grad(self.tree.lm_head) {
            head.backward_weight(enc, dlogits, &ws.hf, &dw, None);
        }
        self.norm_bwd(enc, &self.tree.ln_f, k, &ws.hg, &ws.meanf, &ws.rstdf, &ws.dhf, &ws.dhg, false);
        gather::scatter(enc, &ws.dhg, loss_rows, &ws.grads.dres, k, cfg.hidden);
    }

    /// Backward after `forward` with `Head::Train` (same workspace and inputs): adds every
    /// trainable parameter's gradient. With `WorkspaceOpts::recompute`, each block's forward
    /// is re-run from its saved input before its backward (the last block's activations are
    /// still there from the forward).
    pub fn backward(&self, enc: &mut Encoder, ws: &Workspace, inp: &Inputs) {
        let cfg = &self.cfg;
        let p = &self.params;
        let rows = inp.b * inp.t;
        let (c, f, n) = (cfg.hidden, cfg.ffn, inp.n);
        let g = &ws.grads;
        if n == 0 {
            return;
        }
        let shape = self.attn_shape(inp);
        let lio = LoraIo::of(ws, inp);
        for (l, blk) in self.tree.blocks.iter().enumerate().rev() {
            let a = ws.acts(l);
            let x = &ws.xs[l];
            if ws.opts.recompute && l + 1 < cfg.layers {
                // Rewrites xs[l + 1] with the bits it already holds (no later block reads it).
                self.block_fwd(enc, blk, a, x, &ws.xs[l + 1], inp, lio);
            }
            // x_next = x_mid + mlp(ln2(x_mid)); g.dres holds d x_next.
            match &blk.mlp {
                MlpP::Gated { gate, up, down } => {
                    let h2 = a.h2.as_ref().unwrap();
                    self.linear_bwd(enc, down, rows, &g.dres, &a.act, Some((&g.dact, false)), lio);
                    swiglu::backward(enc, &a.h1, h2, &g.dact, &g.dh1, &g.dh2, rows * f);
                    self.linear_bwd(enc, gate, rows, &g.dh1, &a.ln2, Some((&g.dln, false)), lio);
                    self.linear_bwd(enc, up, rows, &g.dh2, &a.ln2, Some((&g.dln, true)), lio);
                }
                MlpP::Gelu { fc, proj } => {
                    self.linear_bwd(enc, proj, rows, &g.dres, &a.act, Some((&g.dact, false)), lio);
                    gelu::backward(enc, &a.h1, &g.dact, &g.dh1, rows * f);
                    self.linear_bwd(enc, fc, rows, &g.dh1, &a.ln2, Some((&g.dln, false)), lio);
                }
            }
            // d x_mid = d x_next (the residual) + the norm's input gradient.
            self.norm_bwd(enc, &blk.ln2, rows, &a.x_mid, &a.mean2, &a.rstd2, &g.dln, &g.dres, true);
            // x_mid = x + o W_o
            self.linear_bwd(enc, &blk.o, rows, &g.dres, &a.o, Some((&g.d_o, false)), lio);
            attention::backward(
                enc, &shape, &a.q, &a.k, &a.v, &inp.seg, &a.o, &a.lse, &g.d_o, &g.delta, &g.dq, &g.dk, &g.dv,
            );
            if let Some(table) = &self.rope {
                rope::backward(enc, &g.dq, &inp.pos, table, rows, cfg.heads, cfg.head_dim);
                rope::backward(enc, &g.dk, &inp.pos, table, rows, cfg.kv_heads, cfg.head_dim);
            }
            match &blk.attn {
                AttnP::Separate { q, k, v } => {
                    self.linear_bwd(enc, q, rows, &g.dq, &a.ln1, Some((&g.dln, false)), lio);
                    self.linear_bwd(enc, k, rows, &g.dk, &a.ln1, Some((&g.dln, true)), lio);
                    self.linear_bwd(enc, v, rows, &g.dv, &a.ln1, Some((&g.dln, true)), lio);
                }
                AttnP::Fused { c_attn } => {
                    let dqkv = g.dqkv.as_ref().unwrap();
                    for (i, src) in [&g.dq, &g.dk, &g.dv].into_iter().enumerate() {
                        copy2d::copy2d(enc, src, c, 0, dqkv, 3 * c, i * c, rows, c);
                    }
                    self.linear_bwd(enc, c_attn, rows, dqkv, &a.ln1, Some((&g.dln, false)), lio);
                }
            }
            self.norm_bwd(enc, &blk.ln1, rows, x, &a.mean1, &a.rstd1, &g.dln, &g.dres, true);
        }
        // g.dres = d(embedding output).
        if let (Some(dw), Some(idx)) = (p.grad(self.tree.wte), &inp.by_id) {
            embedding::backward(enc, idx, &g.dres, &dw, c);
        }
        if let (Some(wpe), Some(idx)) = (self.tree.wpe, &inp.by_pos) {
            if let Some(dw) = p.grad(wpe) {
                embedding::backward(enc, idx, &g.dres, &dw, c);
            }
        }
    }
}
