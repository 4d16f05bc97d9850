//! Activation buffers: what the forward pass saves for the backward, and the backward's
//! scratch. Sized for the largest micro-batch seen and reused across steps (buffers are
//! bound with their capacity; every kernel takes its real sizes from its parameters).

use super::config::{Arch, ModelConfig};
use super::lora::LoraShape;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::embedding::{self, GroupIndex};
use crate::ops::matmul::{k_ranges, Adapter, RowProduct};
use crate::ops::{attention, bias, layernorm};

/// Saved activations of one block: what `block_fwd` writes and `block_bwd` reads (the
/// decoder holds one set too, see `generate::Scratch`).
pub struct LayerActs {
    /// (rows, C) norm output feeding attention; `mean1` only for LayerNorm.
    pub ln1: Tensor,
    pub mean1: Tensor,
    pub rstd1: Tensor,
    /// (rows, 3C) GPT-2's fused q|k|v projection.
    pub qkv: Option<Tensor>,
    /// Qwen3's per-head q/k norms: their inputs and statistics.
    pub qk_norm: Option<QkNormActs>,
    /// (rows, H*D), (rows, Hk*D), (rows, Hk*D): after RoPE (and the per-head norms).
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// (rows, H*D) attention output, (B*H*T, 2) its log-sum-exp and the backward's delta
    /// (the causal attention's).
    pub o: Tensor,
    pub lse: Tensor,
    /// (rows, C) the residual stream between attention and MLP.
    pub x_mid: Tensor,
    pub ln2: Tensor,
    pub mean2: Tensor,
    pub rstd2: Tensor,
    /// (rows, F) gate (Llama) or c_fc output (GPT-2); up (Llama only); the activation.
    pub h1: Tensor,
    pub h2: Option<Tensor>,
    pub act: Tensor,
    /// Gemma 3's post-norms: their inputs and statistics.
    pub post: Option<PostNormActs>,
}

/// What Gemma 3's post_attention_layernorm and post_feedforward_layernorm save: the
/// sublayer outputs they normalize (o_proj's, down_proj's) and each row's 1/rms.
pub struct PostNormActs {
    /// (rows, C) o_proj output, before its norm joins the residual stream.
    pub attn_out: Tensor,
    /// (rows)
    pub rstd_attn: Tensor,
    /// (rows, C) down_proj output, before its norm joins the residual stream.
    pub mlp_out: Tensor,
    /// (rows)
    pub rstd_mlp: Tensor,
}

/// What the per-head q/k RMSNorm (Qwen3) saves: the projections before the norm, read by
/// its backward, and each head row's 1/rms.
pub struct QkNormActs {
    /// (rows, H*D), (rows, Hk*D) q_proj / k_proj outputs.
    pub q_raw: Tensor,
    pub k_raw: Tensor,
    /// (rows*H), (rows*Hk)
    pub rstd_q: Tensor,
    pub rstd_k: Tensor,
}

/// Backward scratch, shared by all layers (`block_bwd`, `attn_bwd`, `mlp_bwd`).
pub struct Grads {
    /// (rows, C) the gradient of the residual stream, carried down the layers.
    pub dres: Tensor,
    /// (rows, C) the gradient of a norm's output (the attention's or the MLP's input).
    pub dln: Tensor,
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dqkv: Option<Tensor>,
    /// (rows, H*D), (rows, Hk*D) the gradients of q_proj / k_proj outputs, before the
    /// per-head norms (Qwen3).
    pub dq_raw: Option<Tensor>,
    pub dk_raw: Option<Tensor>,
    /// (rows, C) the gradient of a post-normed sublayer's output (o_proj's or down_proj's,
    /// Gemma 3).
    pub dpost: Option<Tensor>,
    pub d_o: Tensor,
    pub dh1: Tensor,
    pub dh2: Tensor,
    pub dact: Tensor,
    /// Partial sums of the two-stage reductions across rows (bias and norm weight
    /// gradients: (rows / ROW_CHUNK, widest), the embedding's: one row per segment of a
    /// frequent id), one reduction at a time.
    pub reduce: Tensor,
}

/// The micro-batch on the GPU.
pub struct Inputs {
    pub b: usize,
    pub t: usize,
    /// N: rows that carry loss.
    pub n: usize,
    pub ids: Tensor,
    pub pos: Tensor,
    pub seg: Tensor,
    pub loss_rows: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
    /// Rows grouped by token id and by position, for the embedding gradients.
    pub by_id: Option<GroupIndex>,
    pub by_pos: Option<GroupIndex>,
    /// Training micro-batches set this to turn LoRA dropout on: u32 (slots) the masks'
    /// salts (distinct per optimizer step and micro-batch, written by the trainer each
    /// step), and this micro-batch's slot. None (scoring, generation): no dropout.
    pub dropout_salt: Option<(Tensor, u32)>,
}

/// Bytes a buffer of `len` 32-bit elements takes on the GPU: `Gpu::zeros` allocates at
/// least one element, rounded up to 16 bytes.
pub fn buffer_bytes(len: usize) -> u64 {
    (len.max(1) as u64 * 4).next_multiple_of(16)
}

/// Loss rows per chunk of the LM head (gather, final norm, logits, loss and the head's
/// backward), so the (N, V) logits are never held whole in training. A multiple of 64, so
/// per-row views at a chunk's start keep the 256-byte binding alignment.
pub const HEAD_CHUNK: usize = 256;

/// Ranges of k (of V) the LM head's input gradient dx(rows, C) = dlogits . W is split into
/// across workgroups (`ops::matmul::k_ranges`), asked at HEAD_CHUNK rows whatever a chunk
/// holds, so that a row's gradient has the same bits in any chunk. The workspace's scratch
/// is sized for GPUs (`Adapter::GPU`) on every adapter, so its bytes do not depend on it.
pub fn head_k_ranges(cfg: &ModelConfig, adapter: Adapter) -> usize {
    k_ranges(adapter, (HEAD_CHUNK, cfg.hidden, cfg.vocab), false)
}

/// The most one chunk of logits may take before the chunk shrinks (to 64 rows at least):
/// a 262K vocabulary at 256 rows would need 268 MiB, at 64 rows 64 MiB.
const LOGITS_CHUNK_BYTES: usize = 16 << 20;

/// Loss rows per head chunk for a vocabulary of `vocab` rows when `requested` are asked
/// for: sized to the vocabulary (a multiple of 64, 64 at least). Chunking changes no bit
/// of the results, only the memory.
pub fn head_rows(requested: usize, vocab: usize) -> usize {
    let fit = LOGITS_CHUNK_BYTES / (4 * vocab.max(1)) / 64 * 64;
    requested.min(fit.max(64))
}

/// Gemma 3's final-logit soft-cap, when the config sets one.
pub(crate) fn softcap(cfg: &ModelConfig) -> Option<f32> {
    cfg.gemma.as_ref().and_then(|g| g.final_softcap)
}

/// How a workspace trades memory for compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceOpts {
    /// Keep only the residual stream entering each block and ONE block's activations,
    /// re-running each block's forward in the backward (activation checkpointing). Off:
    /// every block's activations are saved (more memory, no recompute). Same results.
    pub recompute: bool,
    /// Hold the logits of every loss row (`Head::Logits`: scoring, parity tests) instead of
    /// one chunk's.
    pub all_logits: bool,
    /// Loss rows per head chunk (a positive multiple of 64).
    pub head_chunk: usize,
}

impl Default for WorkspaceOpts {
    /// Training's layout: recompute on, one chunk of logits.
    fn default() -> Self {
        WorkspaceOpts { recompute: true, all_logits: false, head_chunk: HEAD_CHUNK }
    }
}

impl WorkspaceOpts {
    /// For forward callers that read the logits of every loss row.
    pub fn logits() -> Self {
        WorkspaceOpts { all_logits: true, ..Default::default() }
    }
}

/// LoRA's activations: u = drop(x) A^T of every adapted layer, and backward scratch.
pub struct LoraActs {
    /// (rows, R) per adapted layer, indexed by `LoraP::site`.
    pub u: Vec<Tensor>,
    /// (rows, R) the backward's dy B.
    pub g: Tensor,
    /// (rows, max_in) the dropped input (forward) and its gradient (backward), with dropout.
    pub xd: Option<Tensor>,
}

impl LoraActs {
    /// Adapter buffers for micro-batches of up to `rows` tokens.
    pub fn new(gpu: &Gpu, l: &LoraShape, rows: usize) -> Result<LoraActs> {
        Ok(LoraActs {
            u: (0..l.sites).map(|_| gpu.zeros("lora_u", rows * l.rank)).collect::<Result<Vec<_>>>()?,
            g: gpu.zeros("lora_g", rows * l.rank)?,
            xd: if l.dropout { Some(gpu.zeros("lora_xd", rows * l.max_in)?) } else { None },
        })
    }

    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.u.iter().chain([&self.g]).chain(&self.xd)
    }
}

/// The length (in 32-bit elements) of every buffer of a workspace, in allocation order:
/// what `Workspace::with_opts` allocates and `Workspace::bytes` counts.
struct Lens {
    xs: usize,
    layer: Vec<(&'static str, usize)>,
    grads: Vec<(&'static str, usize)>,
    head: Vec<(&'static str, usize)>,
    layers: usize,
}

impl Lens {
    fn new(cfg: &ModelConfig, row_products: &[RowProduct], rows: usize, n: usize, opts: WorkspaceOpts) -> Lens {
        assert!(opts.head_chunk > 0 && opts.head_chunk.is_multiple_of(64), "head chunk {}", opts.head_chunk);
        let (c, f, q, kv) = (cfg.hidden, cfg.ffn, cfg.q_dim(), cfg.kv_dim());
        let bht = rows * cfg.heads;
        let gpt2 = cfg.arch == Arch::Gpt2;
        let stat = if gpt2 { rows } else { 1 };
        let mut layer = vec![("ln1", rows * c), ("mean1", stat), ("rstd1", rows)];
        if gpt2 {
            layer.push(("qkv", rows * 3 * c));
        }
        let (h, hk) = (cfg.heads, cfg.kv_heads);
        if cfg.qk_norm {
            layer.extend([("q_raw", rows * q), ("k_raw", rows * kv), ("rstd_q", rows * h), ("rstd_k", rows * hk)]);
        }
        layer.extend([
            ("q", rows * q),
            ("k", rows * kv),
            ("v", rows * kv),
            ("o", rows * q),
            ("lse", 2 * bht),
            ("x_mid", rows * c),
            ("ln2", rows * c),
            ("mean2", stat),
            ("rstd2", rows),
            ("h1", rows * f),
        ]);
        if !gpt2 {
            layer.push(("h2", rows * f));
        }
        layer.push(("act", rows * f));
        let post = cfg.arch == Arch::Gemma3;
        if post {
            layer.extend([("attn_out", rows * c), ("rstd_attn", rows), ("mlp_out", rows * c), ("rstd_mlp", rows)]);
        }
        let mut grads =
            vec![("dres", rows * c), ("dln", rows * c), ("dq", rows * q), ("dk", rows * kv), ("dv", rows * kv)];
        if gpt2 {
            grads.push(("dqkv", rows * 3 * c));
        }
        if cfg.qk_norm {
            grads.extend([("dq_raw", rows * q), ("dk_raw", rows * kv)]);
        }
        if post {
            grads.push(("dpost", rows * c));
        }
        grads.extend([("d_o", rows * q), ("dh1", rows * f), ("dh2", rows * f), ("dact", rows * f)]);
        let n1 = n.max(1);
        let hr = n1.min(head_rows(opts.head_chunk, cfg.vocab));
        // Reductions across rows: biases (fan-out up to F, 3C, Q), norm weights (C) over
        // the micro-batch's rows or a head chunk's, and the embedding's segments.
        let widest = [c, f, q, kv, if gpt2 { 3 * c } else { 0 }].into_iter().max().unwrap_or(c);
        let mut reduce = bias::scratch_len(rows.max(hr), widest).max(embedding::scratch_len(rows, c));
        if gpt2 {
            // LayerNorm's dw and db partials side by side.
            reduce = reduce.max(layernorm::scratch_len(rows.max(hr), c));
        }
        // The split attention backward's dK/dV partials (GPUs), between two of its passes.
        reduce = reduce.max(attention::scratch_len(rows, cfg.heads, cfg.kv_heads, cfg.head_dim));
        // The LM head's split input gradient: its ranges' partial (chunk, C) products.
        reduce = reduce.max(head_k_ranges(cfg, Adapter::GPU) * hr * c);
        // The weight gradients split across workgroups (many rows, GPUs).
        reduce = reduce.max(row_products.iter().map(|p| p.scratch(rows)).max().unwrap_or(0));
        grads.push(("reduce", reduce));
        let logit_rows = if opts.all_logits { n1 } else { hr };
        let mut head = vec![
            ("hg", hr * c),
            ("hf", hr * c),
            ("meanf", hr),
            ("rstdf", hr),
            ("logits", logit_rows * cfg.vocab),
            ("nll", n1),
            ("dhf", hr * c),
            ("dhg", hr * c),
        ];
        if softcap(cfg).is_some() {
            head.push(("zcap", hr * cfg.vocab));
        }
        let layers = if opts.recompute { cfg.layers.min(1) } else { cfg.layers };
        Lens { xs: rows * c, layer, grads, head, layers }
    }

    fn bytes(&self, cfg: &ModelConfig) -> u64 {
        let sum = |v: &[(&str, usize)]| v.iter().map(|&(_, n)| buffer_bytes(n)).sum::<u64>();
        (cfg.layers as u64 + 1) * buffer_bytes(self.xs)
            + self.layers as u64 * sum(&self.layer)
            + sum(&self.grads)
            + sum(&self.head)
    }
}

pub struct Workspace {
    /// Loss rows per head chunk (`head_rows` of the options and the vocabulary).
    head_rows: usize,
    pub rows: usize,
    pub n: usize,
    pub bht: usize,
    pub opts: WorkspaceOpts,
    /// xs[l] is the residual stream entering block l; xs[L] leaves the last block. (rows, C)
    pub xs: Vec<Tensor>,
    /// One block's activations per block, or (with `opts.recompute`) one set shared by all
    /// blocks, refilled by re-running a block's forward in the backward. See `acts`.
    pub layers: Vec<LayerActs>,
    /// (chunk, C) gathered final hidden states, their normalized form, and norm statistics,
    /// of one head chunk (`opts.head_chunk` loss rows at most).
    pub hg: Tensor,
    pub hf: Tensor,
    pub meanf: Tensor,
    pub rstdf: Tensor,
    /// (chunk, V) one head chunk's logits, overwritten by their gradient in training; (N, V)
    /// the logits of every loss row with `opts.all_logits` (`Head::Logits`).
    pub logits: Tensor,
    /// (N) per-row negative log-likelihood.
    pub nll: Tensor,
    pub dhf: Tensor,
    pub dhg: Tensor,
    /// (chunk, V) with a final-logit soft-cap: one chunk's logits before the cap (the head
    /// writes them here, the cap into `logits`), overwritten by their gradient in training.
    pub zcap: Option<Tensor>,
    pub grads: Grads,
    pub lora: Option<LoraActs>,
}

impl Workspace {
    /// Exactly the bytes `with_opts` allocates (every buffer as `Gpu::zeros` sizes it).
    /// `row_products`: the weight gradients to be computed (`lora::row_products`).
    pub fn bytes(
        cfg: &ModelConfig,
        lora: Option<LoraShape>,
        row_products: &[RowProduct],
        rows: usize,
        n: usize,
        opts: WorkspaceOpts,
    ) -> u64 {
        Lens::new(cfg, row_products, rows, n, opts).bytes(cfg) + lora.map_or(0, |l| l.bytes(rows))
    }

    /// Every buffer of a micro-batch of up to `rows` tokens and `n` loss rows, in the layout
    /// `opts`, with the adapters' buffers when `lora` is given, and the scratch of the
    /// weight gradients `row_products` split across workgroups (see `Model::workspace_with`).
    pub fn with_opts(
        gpu: &Gpu,
        cfg: &ModelConfig,
        lora: Option<LoraShape>,
        row_products: &[RowProduct],
        rows: usize,
        n: usize,
        opts: WorkspaceOpts,
    ) -> Result<Workspace> {
        let lens = Lens::new(cfg, row_products, rows, n, opts);
        let gpt2 = cfg.arch == Arch::Gpt2;
        let post = cfg.arch == Arch::Gemma3;
        let z = |list: &[(&'static str, usize)], name: &str| {
            let &(label, len) = list.iter().find(|(l, _)| *l == name).expect("a listed buffer");
            gpu.zeros(label, len)
        };
        let xs = (0..=cfg.layers).map(|_| gpu.zeros("x", lens.xs)).collect::<Result<Vec<_>>>()?;
        let l = &lens.layer;
        let layers = (0..lens.layers)
            .map(|_| {
                Ok(LayerActs {
                    ln1: z(l, "ln1")?,
                    mean1: z(l, "mean1")?,
                    rstd1: z(l, "rstd1")?,
                    qkv: if gpt2 { Some(z(l, "qkv")?) } else { None },
                    qk_norm: if cfg.qk_norm {
                        Some(QkNormActs {
                            q_raw: z(l, "q_raw")?,
                            k_raw: z(l, "k_raw")?,
                            rstd_q: z(l, "rstd_q")?,
                            rstd_k: z(l, "rstd_k")?,
                        })
                    } else {
                        None
                    },
                    q: z(l, "q")?,
                    k: z(l, "k")?,
                    v: z(l, "v")?,
                    o: z(l, "o")?,
                    lse: z(l, "lse")?,
                    x_mid: z(l, "x_mid")?,
                    ln2: z(l, "ln2")?,
                    mean2: z(l, "mean2")?,
                    rstd2: z(l, "rstd2")?,
                    h1: z(l, "h1")?,
                    h2: if gpt2 { None } else { Some(z(l, "h2")?) },
                    act: z(l, "act")?,
                    post: if post {
                        Some(PostNormActs {
                            attn_out: z(l, "attn_out")?,
                            rstd_attn: z(l, "rstd_attn")?,
                            mlp_out: z(l, "mlp_out")?,
                            rstd_mlp: z(l, "rstd_mlp")?,
                        })
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let gl = &lens.grads;
        let grads = Grads {
            dres: z(gl, "dres")?,
            dln: z(gl, "dln")?,
            dq: z(gl, "dq")?,
            dk: z(gl, "dk")?,
            dv: z(gl, "dv")?,
            dqkv: if gpt2 { Some(z(gl, "dqkv")?) } else { None },
            dq_raw: if cfg.qk_norm { Some(z(gl, "dq_raw")?) } else { None },
            dk_raw: if cfg.qk_norm { Some(z(gl, "dk_raw")?) } else { None },
            dpost: if post { Some(z(gl, "dpost")?) } else { None },
            d_o: z(gl, "d_o")?,
            dh1: z(gl, "dh1")?,
            dh2: z(gl, "dh2")?,
            dact: z(gl, "dact")?,
            reduce: z(gl, "reduce")?,
        };
        let lora = lora.map(|l| LoraActs::new(gpu, &l, rows)).transpose()?;
        let h = &lens.head;
        Ok(Workspace {
            head_rows: head_rows(opts.head_chunk, cfg.vocab),
            rows,
            n: n.max(1),
            bht: rows * cfg.heads,
            opts,
            xs,
            layers,
            hg: z(h, "hg")?,
            hf: z(h, "hf")?,
            meanf: z(h, "meanf")?,
            rstdf: z(h, "rstdf")?,
            logits: z(h, "logits")?,
            nll: z(h, "nll")?,
            dhf: z(h, "dhf")?,
            dhg: z(h, "dhg")?,
            zcap: if softcap(cfg).is_some() { Some(z(h, "zcap")?) } else { None },
            grads,
            lora,
        })
    }

    /// Block `l`'s activation buffers (the shared set under `opts.recompute`).
    pub fn acts(&self, l: usize) -> &LayerActs {
        &self.layers[if self.opts.recompute { 0 } else { l }]
    }

    /// Whether this workspace can hold a micro-batch of `rows` tokens and `n` loss rows.
    pub fn fits(&self, rows: usize, n: usize) -> bool {
        rows <= self.rows && n <= self.n
    }

    /// Loss rows of one head chunk.
    pub fn head_chunk(&self) -> usize {
        self.head_rows
    }

    /// Every buffer this workspace holds.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut out: Vec<&Tensor> = self.xs.iter().collect();
        for a in &self.layers {
            out.extend([&a.ln1, &a.mean1, &a.rstd1]);
            out.extend(&a.qkv);
            if let Some(n) = &a.qk_norm {
                out.extend([&n.q_raw, &n.k_raw, &n.rstd_q, &n.rstd_k]);
            }
            out.extend([&a.q, &a.k, &a.v, &a.o, &a.lse, &a.x_mid, &a.ln2, &a.mean2, &a.rstd2, &a.h1]);
            out.extend(&a.h2);
            out.push(&a.act);
            if let Some(p) = &a.post {
                out.extend([&p.attn_out, &p.rstd_attn, &p.mlp_out, &p.rstd_mlp]);
            }
        }
        let g = &self.grads;
        out.extend([&g.dres, &g.dln, &g.dq, &g.dk, &g.dv]);
        out.extend(&g.dqkv);
        out.extend(g.dq_raw.iter().chain(&g.dk_raw));
        out.extend(&g.dpost);
        out.extend([&g.d_o, &g.dh1, &g.dh2, &g.dact, &g.reduce]);
        out.extend([&self.hg, &self.hf, &self.meanf, &self.rstdf, &self.logits, &self.nll, &self.dhf, &self.dhg]);
        out.extend(&self.zcap);
        if let Some(l) = &self.lora {
            out.extend(l.tensors());
        }
        out
    }

    /// The bytes of GPU memory this workspace's buffers take (their allocated sizes).
    pub fn gpu_bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.buf.size()).sum()
    }
}
