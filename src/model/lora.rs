//! LoRA adapters (Hu et al. 2021) as PEFT defines them: a frozen linear layer
//! y = x W^T + b gains y += s * (drop(x) A^T) B^T with A (R, in), B (out, R) trainable,
//! s = alpha / R (or alpha / sqrt(R) with rsLoRA). Parameters are named as PEFT saves them
//! (`base_model.model.<module>.lora_A.weight`), A starts kaiming-uniform (a = sqrt 5,
//! i.e. U(-1/sqrt(in), 1/sqrt(in))) and B at zero, so step 0 is the base model.

use super::arch::{AttnP, LinearP, MlpP, ModelP};
use super::config::Arch;
use super::params::ParamSpec;
use crate::error::{Error, Result};
use crate::ops::matmul::{Linear, RowProduct};
use crate::rng::Rng;

/// PEFT's prefix of every adapter tensor name (PeftModel -> LoraModel -> the HF model).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The target that stands for every linear layer but the LM head, as in PEFT.
pub const ALL_LINEAR: &str = "all-linear";

#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// R
    pub rank: usize,
    pub alpha: f32,
    /// Dropout on the adapter's input, in [0, 1); 0 runs nothing extra.
    pub dropout: f32,
    /// Scale alpha / sqrt(R) instead of alpha / R.
    pub rslora: bool,
    /// Module names matched as PEFT matches them: the full module path, or its suffix
    /// after a dot (`q_proj`, `c_proj` matches both of GPT-2's).
    pub targets: Vec<String>,
    /// Seeds A's init and the dropout masks.
    pub seed: u64,
}

impl LoraConfig {
    pub fn new(rank: usize, alpha: f32, targets: &[&str]) -> Self {
        LoraConfig {
            rank,
            alpha,
            dropout: 0.0,
            rslora: false,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            seed: 0,
        }
    }

    /// Every linear layer of the blocks of `arch` (the usual "all-linear" choice).
    pub fn all_linear(arch: Arch) -> &'static [&'static str] {
        match arch {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => {
                &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            }
            Arch::Gpt2 => &["c_attn", "c_proj", "c_fc"],
        }
    }

    /// This configuration with `all-linear` replaced by the linear layers of `arch`.
    pub fn expanded(&self, arch: Arch) -> LoraConfig {
        let mut l = self.clone();
        if l.targets.iter().any(|t| t == ALL_LINEAR) {
            l.targets = LoraConfig::all_linear(arch).iter().map(|s| s.to_string()).collect();
        }
        l
    }

    pub fn scale(&self) -> f32 {
        let r = self.rank as f64;
        (self.alpha as f64 / if self.rslora { r.sqrt() } else { r }) as f32
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Config("LoRA rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("LoRA dropout {} is not in [0, 1)", self.dropout)));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Config(format!("LoRA alpha {} is not finite", self.alpha)));
        }
        if self.targets.is_empty() {
            return Err(Error::Config("LoRA needs at least one target module".into()));
        }
        Ok(())
    }

    /// PEFT's rule (`check_target_module_exists` with a list): the module path equals the
    /// target or ends with `.` + target.
    pub fn matches(&self, module: &str) -> bool {
        self.targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// One adapted linear layer.
#[derive(Clone, Debug)]
pub struct LoraP {
    /// A (R, in), B (out, R)
    pub a: super::Pid,
    pub b: super::Pid,
    pub rank: usize,
    pub scale: f32,
    /// Index among the adapted layers (forward order): picks its saved u and dropout mask.
    pub site: usize,
}

/// What the workspace needs for the adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    pub sites: usize,
    pub rank: usize,
    /// The largest fan-in of an adapted layer (dropout's scratch).
    pub max_in: usize,
    pub dropout: bool,
}

impl LoraShape {
    /// Activation bytes for a micro-batch of `rows` tokens: u (rows, R) per site, the
    /// backward's (rows, R) scratch, and with dropout the dropped input (rows, max_in), each
    /// buffer as the GPU allocates it.
    pub fn bytes(&self, rows: usize) -> u64 {
        use super::workspace::buffer_bytes;
        let u = buffer_bytes(rows * self.rank);
        u * (self.sites as u64 + 1) + if self.dropout { buffer_bytes(rows * self.max_in) } else { 0 }
    }
}

/// The module path of a linear layer (its weight's name without `.weight`).
pub fn module_name(specs: &[ParamSpec], l: &LinearP) -> String {
    specs[l.w].name.strip_suffix(".weight").unwrap_or(&specs[l.w].name).to_string()
}

/// Every linear layer of the blocks, mutably, in forward order.
pub(crate) fn linears_mut(tree: &mut ModelP) -> Vec<&mut LinearP> {
    let mut out = Vec::new();
    for blk in &mut tree.blocks {
        match &mut blk.attn {
            AttnP::Separate { q, k, v } => out.extend([q, k, v]),
            AttnP::Fused { c_attn } => out.push(c_attn),
        }
        out.push(&mut blk.o);
        match &mut blk.mlp {
            MlpP::Gated { gate, up, down } => out.extend([gate, up, down]),
            MlpP::Gelu { fc, proj } => out.extend([fc, proj]),
        }
    }
    out
}

/// Every linear layer of the blocks, in forward order.
pub fn linears(tree: &ModelP) -> Vec<&LinearP> {
    let mut out = Vec::new();
    for blk in &tree.blocks {
        match &blk.attn {
            AttnP::Separate { q, k, v } => out.extend([q, k, v]),
            AttnP::Fused { c_attn } => out.push(c_attn),
        }
        out.push(&blk.o);
        match &blk.mlp {
            MlpP::Gated { gate, up, down } => out.extend([gate, up, down]),
            MlpP::Gelu { fc, proj } => out.extend([fc, proj]),
        }
    }
    out
}

/// The weight gradients whose depth is the rows, of every layer of the blocks: dW where
/// the weight is trainable (full fine-tuning), dA and dB where an adapter is (LoRA); as
/// the workspace sizes the scratch that splits them (`ops::matmul::RowProduct`).
pub fn row_products(specs: &[ParamSpec], tree: &ModelP) -> Vec<RowProduct> {
    let mut out = Vec::new();
    for l in linears(tree) {
        if specs[l.w].trainable {
            out.push(Linear { rows: 0, fan_in: l.fan_in, fan_out: l.fan_out, layout: l.layout }.weight_grad());
        }
        if let Some(lp) = &l.lora {
            out.extend(grad_products(l, lp.rank));
        }
    }
    out
}

/// An adapter's gradients as products over the rows: dA(R, in) += s g^T drop(x), whose K
/// may be split across threads although M is the rank, and dB(out, R) += s dy^T u.
pub fn grad_products(l: &LinearP, rank: usize) -> [RowProduct; 2] {
    [RowProduct { m: rank, n: l.fan_in, split_k: true }, RowProduct { m: l.fan_out, n: rank, split_k: false }]
}

/// Freeze every base parameter and add the adapters of `cfg` to the matching layers.
/// Returns the adapters' initial values by name (A kaiming-uniform from `cfg.seed`, B 0).
pub(crate) fn attach(
    cfg: &LoraConfig,
    specs: &mut Vec<ParamSpec>,
    tree: &mut ModelP,
) -> Result<std::collections::HashMap<String, Vec<f32>>> {
    cfg.validate()?;
    for s in specs.iter_mut() {
        s.trainable = false;
    }
    let mut used = vec![false; cfg.targets.len()];
    let mut init = std::collections::HashMap::new();
    let mut rng = Rng::new(cfg.seed);
    let mut site = 0;
    for l in linears_mut(tree) {
        let module = module_name(specs, l);
        if !cfg.matches(&module) {
            continue;
        }
        for (u, t) in used.iter_mut().zip(&cfg.targets) {
            *u |= module == *t || module.ends_with(&format!(".{t}"));
        }
        let r = cfg.rank;
        let a_name = format!("{PEFT_PREFIX}{module}.lora_A.weight");
        let b_name = format!("{PEFT_PREFIX}{module}.lora_B.weight");
        let bound = 1.0 / (l.fan_in as f64).sqrt();
        let a_vals: Vec<f32> = (0..r * l.fan_in).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect();
        init.insert(a_name.clone(), a_vals);
        init.insert(b_name.clone(), vec![0.0; l.fan_out * r]);
        specs.push(ParamSpec { name: a_name, shape: vec![r, l.fan_in], trainable: true, f32_only: true });
        specs.push(ParamSpec { name: b_name, shape: vec![l.fan_out, r], trainable: true, f32_only: true });
        let n = specs.len();
        l.lora = Some(LoraP { a: n - 2, b: n - 1, rank: r, scale: cfg.scale(), site });
        site += 1;
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Error::Config(format!(
            "LoRA target module `{}` matches no linear layer of the model",
            cfg.targets[i]
        )));
    }
    Ok(init)
}

/// The workspace's view of a model's adapters; None without adapters.
pub fn shape(cfg: &LoraConfig, tree: &ModelP) -> Option<LoraShape> {
    let adapted: Vec<&LinearP> = linears(tree).into_iter().filter(|l| l.lora.is_some()).collect();
    (!adapted.is_empty()).then(|| LoraShape {
        sites: adapted.len(),
        rank: cfg.rank,
        max_in: adapted.iter().map(|l| l.fan_in).max().unwrap_or(0),
        dropout: cfg.dropout > 0.0,
    })
}
