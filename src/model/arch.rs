//! The parameter tree of each architecture, named exactly as the Hugging Face checkpoint
//! names it, so loading and exporting are a name map.

use super::config::{Arch, ModelConfig};
use super::params::{ParamSpec, Pid};
use crate::ops::matmul::WeightLayout;

/// A linear layer's parameters and shape.
#[derive(Clone, Debug)]
pub struct LinearP {
    pub w: Pid,
    pub b: Option<Pid>,
    pub fan_in: usize,
    pub fan_out: usize,
    pub layout: WeightLayout,
    /// The LoRA adapter on this layer, if any.
    pub lora: Option<super::lora::LoraP>,
}

#[derive(Clone, Debug)]
pub struct NormP {
    pub w: Pid,
    /// LayerNorm's bias; None for RMSNorm.
    pub b: Option<Pid>,
}

#[derive(Clone, Debug)]
pub enum AttnP {
    /// q_proj, k_proj, v_proj (Llama, Qwen2, Qwen3).
    Separate { q: LinearP, k: LinearP, v: LinearP },
    /// GPT-2's c_attn: one (C, 3C) Conv1D whose output columns are [q | k | v].
    Fused { c_attn: LinearP },
}

#[derive(Clone, Debug)]
pub enum MlpP {
    /// down(silu(gate(x)) * up(x))
    Gated { gate: LinearP, up: LinearP, down: LinearP },
    /// c_proj(gelu(c_fc(x)))
    Gelu { fc: LinearP, proj: LinearP },
}

#[derive(Clone, Debug)]
pub struct BlockP {
    pub ln1: NormP,
    pub attn: AttnP,
    /// Qwen3's q_norm and k_norm: RMSNorm weights (D) applied to each head of q and k
    /// before RoPE.
    pub qk_norm: Option<(NormP, NormP)>,
    /// o_proj / attn.c_proj
    pub o: LinearP,
    /// Before the MLP: post_attention_layernorm (Llama, Qwen) / ln_2 (GPT-2) /
    /// pre_feedforward_layernorm (Gemma 3).
    pub ln2: NormP,
    pub mlp: MlpP,
    /// Gemma 3's post_attention_layernorm and post_feedforward_layernorm (C): each applied
    /// to its sublayer's output before the residual add.
    pub post: Option<(NormP, NormP)>,
    /// Gemma 3's local layers: sliding-window attention with the local RoPE base.
    pub sliding: bool,
}

#[derive(Clone, Debug)]
pub struct ModelP {
    pub wte: Pid,
    /// GPT-2's learned positions (P, C).
    pub wpe: Option<Pid>,
    pub blocks: Vec<BlockP>,
    pub ln_f: NormP,
    /// (V, C); the embedding itself when tied.
    pub lm_head: Pid,
}

/// Collects parameter specs under a name prefix, like candle's VarBuilder `pp`.
struct Specs {
    specs: Vec<ParamSpec>,
}

impl Specs {
    fn add(&mut self, name: String, shape: Vec<usize>) -> Pid {
        self.specs.push(ParamSpec { name, shape, trainable: true, f32_only: false });
        self.specs.len() - 1
    }

    fn linear(&mut self, prefix: &str, fan_in: usize, fan_out: usize, bias: bool, layout: WeightLayout) -> LinearP {
        let shape = match layout {
            WeightLayout::OutIn => vec![fan_out, fan_in],
            WeightLayout::InOut => vec![fan_in, fan_out],
        };
        let w = self.add(format!("{prefix}.weight"), shape);
        let b = bias.then(|| self.add(format!("{prefix}.bias"), vec![fan_out]));
        LinearP { w, b, fan_in, fan_out, layout, lora: None }
    }

    fn norm(&mut self, prefix: &str, c: usize, bias: bool) -> NormP {
        let w = self.add(format!("{prefix}.weight"), vec![c]);
        let b = bias.then(|| self.add(format!("{prefix}.bias"), vec![c]));
        NormP { w, b }
    }
}

/// The parameter specs of `cfg` (in a stable order) and the tree that indexes them.
pub fn build(cfg: &ModelConfig) -> (Vec<ParamSpec>, ModelP) {
    let mut s = Specs { specs: Vec::new() };
    let (c, f) = (cfg.hidden, cfg.ffn);
    let tree = match cfg.arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            let lin = WeightLayout::OutIn;
            let wte = s.add("model.embed_tokens.weight".into(), vec![cfg.vocab, c]);
            let blocks = (0..cfg.layers)
                .map(|i| {
                    let p = format!("model.layers.{i}");
                    let ln1 = s.norm(&format!("{p}.input_layernorm"), c, false);
                    let q = s.linear(&format!("{p}.self_attn.q_proj"), c, cfg.q_dim(), cfg.qkv_bias, lin);
                    let k = s.linear(&format!("{p}.self_attn.k_proj"), c, cfg.kv_dim(), cfg.qkv_bias, lin);
                    let v = s.linear(&format!("{p}.self_attn.v_proj"), c, cfg.kv_dim(), cfg.qkv_bias, lin);
                    let o = s.linear(&format!("{p}.self_attn.o_proj"), cfg.q_dim(), c, cfg.o_bias, lin);
                    // After o_proj, as Qwen3Attention registers them (the checkpoint's order).
                    let qk_norm = cfg.qk_norm.then(|| {
                        let d = cfg.head_dim;
                        (
                            s.norm(&format!("{p}.self_attn.q_norm"), d, false),
                            s.norm(&format!("{p}.self_attn.k_norm"), d, false),
                        )
                    });
                    let ln2 = s.norm(&format!("{p}.post_attention_layernorm"), c, false);
                    let gate = s.linear(&format!("{p}.mlp.gate_proj"), c, f, cfg.mlp_bias, lin);
                    let up = s.linear(&format!("{p}.mlp.up_proj"), c, f, cfg.mlp_bias, lin);
                    let down = s.linear(&format!("{p}.mlp.down_proj"), f, c, cfg.mlp_bias, lin);
                    BlockP {
                        ln1,
                        attn: AttnP::Separate { q, k, v },
                        qk_norm,
                        o,
                        ln2,
                        mlp: MlpP::Gated { gate, up, down },
                        post: None,
                        sliding: false,
                    }
                })
                .collect();
            let ln_f = s.norm("model.norm", c, false);
            let lm_head = if cfg.tied { wte } else { s.add("lm_head.weight".into(), vec![cfg.vocab, c]) };
            ModelP { wte, wpe: None, blocks, ln_f, lm_head }
        }
        Arch::Gemma3 => {
            let lin = WeightLayout::OutIn;
            let (q_dim, kv_dim, d) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
            let wte = s.add("model.embed_tokens.weight".into(), vec![cfg.vocab, c]);
            let blocks = (0..cfg.layers)
                .map(|i| {
                    // Gemma3DecoderLayer's registration order (the checkpoint's): attention,
                    // MLP, then the four norms.
                    let p = format!("model.layers.{i}");
                    let q = s.linear(&format!("{p}.self_attn.q_proj"), c, q_dim, false, lin);
                    let k = s.linear(&format!("{p}.self_attn.k_proj"), c, kv_dim, false, lin);
                    let v = s.linear(&format!("{p}.self_attn.v_proj"), c, kv_dim, false, lin);
                    let o = s.linear(&format!("{p}.self_attn.o_proj"), q_dim, c, false, lin);
                    let qn = s.norm(&format!("{p}.self_attn.q_norm"), d, false);
                    let kn = s.norm(&format!("{p}.self_attn.k_norm"), d, false);
                    let gate = s.linear(&format!("{p}.mlp.gate_proj"), c, f, false, lin);
                    let up = s.linear(&format!("{p}.mlp.up_proj"), c, f, false, lin);
                    let down = s.linear(&format!("{p}.mlp.down_proj"), f, c, false, lin);
                    let ln1 = s.norm(&format!("{p}.input_layernorm"), c, false);
                    let post_attn = s.norm(&format!("{p}.post_attention_layernorm"), c, false);
                    let ln2 = s.norm(&format!("{p}.pre_feedforward_layernorm"), c, false);
                    let post_mlp = s.norm(&format!("{p}.post_feedforward_layernorm"), c, false);
                    BlockP {
                        ln1,
                        attn: AttnP::Separate { q, k, v },
                        qk_norm: Some((qn, kn)),
                        o,
                        ln2,
                        mlp: MlpP::Gated { gate, up, down },
                        post: Some((post_attn, post_mlp)),
                        sliding: cfg.is_sliding(i),
                    }
                })
                .collect();
            let ln_f = s.norm("model.norm", c, false);
            let lm_head = if cfg.tied { wte } else { s.add("lm_head.weight".into(), vec![cfg.vocab, c]) };
            ModelP { wte, wpe: None, blocks, ln_f, lm_head }
        }
        Arch::Gpt2 => {
            let conv = WeightLayout::InOut;
            let wte = s.add("transformer.wte.weight".into(), vec![cfg.vocab, c]);
            let wpe = s.add("transformer.wpe.weight".into(), vec![cfg.max_pos, c]);
            s.specs[wpe].f32_only = true;
            let blocks = (0..cfg.layers)
                .map(|i| {
                    let p = format!("transformer.h.{i}");
                    let ln1 = s.norm(&format!("{p}.ln_1"), c, true);
                    let c_attn = s.linear(&format!("{p}.attn.c_attn"), c, 3 * c, true, conv);
                    let o = s.linear(&format!("{p}.attn.c_proj"), c, c, true, conv);
                    let ln2 = s.norm(&format!("{p}.ln_2"), c, true);
                    let fc = s.linear(&format!("{p}.mlp.c_fc"), c, f, true, conv);
                    let proj = s.linear(&format!("{p}.mlp.c_proj"), f, c, true, conv);
                    BlockP {
                        ln1,
                        attn: AttnP::Fused { c_attn },
                        qk_norm: None,
                        o,
                        ln2,
                        mlp: MlpP::Gelu { fc, proj },
                        post: None,
                        sliding: false,
                    }
                })
                .collect();
            let ln_f = s.norm("transformer.ln_f", c, true);
            ModelP { wte, wpe: Some(wpe), blocks, ln_f, lm_head: wte }
        }
    };
    (s.specs, tree)
}
