//! Activation buffers: what the forward pass saves for the backward, and the backward's
//! scratch. Sized for the largest micro-batch seen and reused across steps (buffers are
//! bound with their capacity; every kernel takes its real sizes from its parameters).

use super::config::{Arch, ModelConfig};
use super::lora::LoraShape;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::embedding::GroupIndex;

/// Saved activations of one block.
pub struct LayerActs {
    /// (rows, C) norm output feeding attention; `mean1` only for LayerNorm.
    pub ln1: Tensor,
    pub mean1: Tensor,
    pub rstd1: Tensor,
    /// (rows, 3C) GPT-2's fused q|k|v projection.
    pub qkv: Option<Tensor>,
    /// (rows, H*D), (rows, Hk*D), (rows, Hk*D): after RoPE.
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// (rows, H*D) attention output, (B*H*T) its log-sum-exp.
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
}

/// Backward scratch, shared by all layers.
pub struct Grads {
    /// (rows, C) the gradient of the residual stream, carried down the layers.
    pub dres: Tensor,
    pub dln: Tensor,
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dqkv: Option<Tensor>,
    pub d_o: Tensor,
    pub dh1: Tensor,
    pub dh2: Tensor,
    pub dact: Tensor,
    /// (B*H*T)
    pub delta: Tensor,
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
    /// Training micro-batches set this to turn LoRA dropout on: the mask's salt (distinct
    /// per optimizer step and micro-batch). None (scoring, generation): no dropout.
    pub dropout_salt: Option<u32>,
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
}

pub struct Workspace {
    pub rows: usize,
    pub n: usize,
    pub bht: usize,
    /// xs[l] is the residual stream entering block l; xs[L] leaves the last block. (rows, C)
    pub xs: Vec<Tensor>,
    pub layers: Vec<LayerActs>,
    /// (N, C) gathered final hidden states, their normalized form, and norm statistics.
    pub hg: Tensor,
    pub hf: Tensor,
    pub meanf: Tensor,
    pub rstdf: Tensor,
    /// (N, V) logits, overwritten by their gradient.
    pub logits: Tensor,
    /// (N) per-row negative log-likelihood.
    pub nll: Tensor,
    pub dhf: Tensor,
    pub dhg: Tensor,
    pub grads: Grads,
    pub lora: Option<LoraActs>,
}

impl Workspace {
    /// Bytes a micro-batch of `rows` tokens with `n` loss rows needs, to refuse before
    /// allocating.
    pub fn bytes_for(cfg: &ModelConfig, rows: usize, n: usize) -> u64 {
        let (c, f, q, kv) = (cfg.hidden, cfg.ffn, cfg.q_dim(), cfg.kv_dim());
        let bht = rows * cfg.heads;
        let gpt2 = cfg.arch == Arch::Gpt2;
        let per_layer = rows * (4 * c + q + 2 * kv + q + 4 + if gpt2 { 3 * c + 2 * f } else { 3 * f }) + bht;
        let scratch = rows * (2 * c + 2 * q + 2 * kv + 3 * f + if gpt2 { 3 * c } else { 0 }) + bht;
        let head = n * (5 * c + cfg.vocab + 4);
        4 * ((cfg.layers * per_layer + (cfg.layers + 1) * rows * c + scratch + head) as u64)
    }

    pub fn new(gpu: &Gpu, cfg: &ModelConfig, rows: usize, n: usize) -> Result<Workspace> {
        Workspace::with_lora(gpu, cfg, None, rows, n)
    }

    /// Bytes of `with_lora`'s buffers (the activations of a micro-batch, adapters included).
    pub fn bytes_with_lora(cfg: &ModelConfig, lora: Option<LoraShape>, rows: usize, n: usize) -> u64 {
        Workspace::bytes_for(cfg, rows, n) + lora.map_or(0, |l| l.bytes(rows))
    }

    pub fn with_lora(
        gpu: &Gpu,
        cfg: &ModelConfig,
        lora: Option<LoraShape>,
        rows: usize,
        n: usize,
    ) -> Result<Workspace> {
        let (c, f, q, kv) = (cfg.hidden, cfg.ffn, cfg.q_dim(), cfg.kv_dim());
        let bht = rows * cfg.heads;
        let gpt2 = cfg.arch == Arch::Gpt2;
        let z = |label: &str, len: usize| gpu.zeros(label, len);
        let xs = (0..=cfg.layers).map(|_| z("x", rows * c)).collect::<Result<Vec<_>>>()?;
        let layers = (0..cfg.layers)
            .map(|_| {
                Ok(LayerActs {
                    ln1: z("ln1", rows * c)?,
                    mean1: z("mean1", if gpt2 { rows } else { 1 })?,
                    rstd1: z("rstd1", rows)?,
                    qkv: if gpt2 { Some(z("qkv", rows * 3 * c)?) } else { None },
                    q: z("q", rows * q)?,
                    k: z("k", rows * kv)?,
                    v: z("v", rows * kv)?,
                    o: z("o", rows * q)?,
                    lse: z("lse", bht)?,
                    x_mid: z("x_mid", rows * c)?,
                    ln2: z("ln2", rows * c)?,
                    mean2: z("mean2", if gpt2 { rows } else { 1 })?,
                    rstd2: z("rstd2", rows)?,
                    h1: z("h1", rows * f)?,
                    h2: if gpt2 { None } else { Some(z("h2", rows * f)?) },
                    act: z("act", rows * f)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let grads = Grads {
            dres: z("dres", rows * c)?,
            dln: z("dln", rows * c)?,
            dq: z("dq", rows * q)?,
            dk: z("dk", rows * kv)?,
            dv: z("dv", rows * kv)?,
            dqkv: if gpt2 { Some(z("dqkv", rows * 3 * c)?) } else { None },
            d_o: z("d_o", rows * q)?,
            dh1: z("dh1", rows * f)?,
            dh2: z("dh2", rows * f)?,
            dact: z("dact", rows * f)?,
            delta: z("delta", bht)?,
        };
        let lora = lora.map(|l| LoraActs::new(gpu, &l, rows)).transpose()?;
        let n1 = n.max(1);
        Ok(Workspace {
            rows,
            n: n1,
            bht,
            xs,
            layers,
            hg: z("hg", n1 * c)?,
            hf: z("hf", n1 * c)?,
            meanf: z("meanf", n1)?,
            rstdf: z("rstdf", n1)?,
            logits: z("logits", n1 * cfg.vocab)?,
            nll: z("nll", n1)?,
            dhf: z("dhf", n1 * c)?,
            dhg: z("dhg", n1 * c)?,
            grads,
            lora,
        })
    }

    /// Whether this workspace can hold a micro-batch of `rows` tokens and `n` loss rows.
    pub fn fits(&self, rows: usize, n: usize) -> bool {
        rows <= self.rows && n <= self.n
    }
}
