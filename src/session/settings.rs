//! The one settings type of a fine-tuning run. The command line's flags, the page's form,
//! checkpoints (their `settings` entry) and exported configurations all read and write
//! this struct through its one JSON form (serde, `snake_case` keys, every key optional:
//! a missing key takes [`Settings::default`]). Its `Default` is the only set of defaults
//! in the engine.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::export::gguf::GgufDtype;
pub use crate::load::base::Base;
use crate::model::lora::{LoraConfig, ALL_LINEAR};
use crate::ops::adamw::AdamW;
use crate::train::{Length, LossMode, RunConfig, ScheduleKind};

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Low-rank adapters on a frozen base (the `lora_*` settings).
    Lora,
    /// Every weight.
    Full,
}

/// How the trained model is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `peft` for LoRA; for full fine-tuning `merged` over a Hugging Face base, `gguf`
    /// over a GGUF base.
    Auto,
    /// A PEFT adapter folder (LoRA only).
    Peft,
    /// A Hugging Face folder with the adapters merged in (needs a Hugging Face base).
    Merged,
    /// One GGUF file with the adapters merged in, its matrices in `gguf_type`.
    Gguf,
}

macro_rules! str_enum {
    ($t:ty, $($name:literal => $v:expr),+) => {
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($v),)+
                    _ => Err(Error::Usage(format!(
                        "unknown {} `{s}` ({})", stringify!($t).to_lowercase(), [$($name),+].join(", ")
                    ))),
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                $(if *self == $v { return f.write_str($name); })+
                unreachable!()
            }
        }
    };
}
str_enum!(Method, "lora" => Method::Lora, "full" => Method::Full);
str_enum!(
    Base,
    "auto" => Base::Auto,
    "f32" => Base::F32,
    "f16" => Base::F16,
    "bf16" => Base::Bf16,
    "q8_0" => Base::Q8_0,
    "q4_0" => Base::Q4_0,
    "q4_k" => Base::Q4K
);
str_enum!(GgufDtype, "f16" => GgufDtype::F16, "f32" => GgufDtype::F32, "q8_0" => GgufDtype::Q8_0);
str_enum!(Format, "auto" => Format::Auto, "peft" => Format::Peft, "merged" => Format::Merged, "gguf" => Format::Gguf);

/// Everything a user decides about a run. Field names are the JSON keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub method: Method,
    /// LoRA rank R.
    pub lora_rank: usize,
    /// The adapter's output is scaled by alpha / R (alpha / sqrt(R) with `rslora`).
    #[serde(serialize_with = "short_f32")]
    pub lora_alpha: f32,
    /// Dropout on the adapter's input, in [0, 1).
    #[serde(serialize_with = "short_f32")]
    pub lora_dropout: f32,
    pub rslora: bool,
    /// Module names matched as PEFT matches them (suffixes), or `["all-linear"]`.
    pub lora_targets: Vec<String>,
    #[serde(with = "as_str")]
    pub loss: LossMode,
    /// Peak learning rate.
    #[serde(serialize_with = "short_f32")]
    pub lr: f32,
    #[serde(with = "as_str")]
    pub schedule: ScheduleKind,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Examples per optimizer step (the accumulated batch).
    pub batch: usize,
    /// Micro-batches each batch is accumulated over.
    pub grad_accum: usize,
    /// Examples per forward/backward pass (default `batch / grad_accum`).
    pub micro_batch: Option<usize>,
    /// Optimizer steps; when set, `epochs` is not used.
    pub steps: Option<u64>,
    /// Passes over the training set (when `steps` is not set).
    pub epochs: u64,
    /// Longest example in tokens (capped by the model's positions): longer ones lose
    /// prompt tokens from the left first, then answer tokens from the right.
    pub max_len: usize,
    /// Pack examples into rows of up to this many tokens (0: one example per row).
    pub pack: usize,
    /// For chat data: train only the last assistant turn.
    pub last_turn_only: bool,
    /// Seeds the data order, the validation split, LoRA's initialization and dropout.
    pub seed: u64,
    /// AdamW's decoupled weight decay (matrices only).
    #[serde(serialize_with = "short_f32")]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    #[serde(serialize_with = "short_f32")]
    pub max_grad_norm: f32,
    /// Share of the training file held out for validation when no evaluation file is
    /// given (0: none).
    pub val_share: f64,
    /// Validate on at most this many held-out examples (0: all).
    pub val_limit: usize,
    /// Validation loss every this many steps (and after the last); 0: after the last only.
    pub eval_every: u64,
    /// Activation checkpointing (the same results, much less memory).
    pub recompute: bool,
    pub format: Format,
    /// How LoRA keeps the frozen base on the GPU: `auto` (the file's GGUF blocks or
    /// f16/bf16 as they are), `f32`, or quantized on load (`f16`, `bf16`, `q8_0`, `q4_0`,
    /// `q4_k`). Fixed when the model loads.
    pub base: Base,
    /// The matrices' type in a GGUF export: `f16` (the default), `f32`, or `q8_0`
    /// (matrices whose rows are not whole 32-value blocks stay F16).
    pub gguf_type: GgufDtype,
}

impl Default for Settings {
    /// LoRA r8 on every linear layer at PEFT's usual lr 2e-4 (QLoRA's recipe for small
    /// models), per-example SFT (the source document's loss), TRL's batch 8, 3 epochs,
    /// linear decay, seed 42 and maximum length 1024; clipping at 1 as transformers does.
    fn default() -> Self {
        Settings {
            method: Method::Lora,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            rslora: false,
            lora_targets: vec![ALL_LINEAR.to_string()],
            loss: LossMode::PerExample,
            lr: 2e-4,
            schedule: ScheduleKind::Linear,
            warmup: 0,
            batch: 8,
            grad_accum: 1,
            micro_batch: None,
            steps: None,
            epochs: 3,
            max_len: 1024,
            pack: 0,
            last_turn_only: false,
            seed: 42,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            val_share: 0.0,
            val_limit: 0,
            eval_every: 0,
            recompute: true,
            format: Format::Auto,
            base: Base::Auto,
            gguf_type: GgufDtype::F16,
        }
    }
}

/// A setting that cannot work, named by its key.
fn bad(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Setting { field: field.to_string(), message: msg.to_string() }
}

impl Settings {
    /// Settings from JSON (missing keys take the defaults); a wrong key or value is an
    /// error that names it.
    pub fn from_json(v: &serde_json::Value) -> Result<Settings> {
        let s: Settings = serde_path_to_error::deserialize(v).map_err(path_error)?;
        s.check()?;
        Ok(s)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// These settings with the keys of `patch` (a JSON object) replaced; giving `epochs`
    /// without `steps` switches the run's length to epochs.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Settings> {
        let obj = patch.as_object().ok_or_else(|| Error::Usage("settings must be an object of key -> value".into()))?;
        let mut v = self.to_json();
        for (k, x) in obj {
            v[k.as_str()] = x.clone();
        }
        if obj.contains_key("epochs") && !obj.contains_key("steps") {
            v["steps"] = serde_json::Value::Null;
        }
        Settings::from_json(&v)
    }

    /// Every value in its range; conflicts with a model or data are `Session::check`'s.
    pub fn check(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(bad("batch", "must be at least 1"));
        }
        if self.grad_accum == 0 || self.grad_accum > self.batch {
            return Err(bad("grad_accum", format!("must be between 1 and the batch size {}", self.batch)));
        }
        if let Some(m) = self.micro_batch {
            if m == 0 || m > self.batch {
                return Err(bad("micro_batch", format!("must be between 1 and the batch size {}", self.batch)));
            }
        }
        if self.steps == Some(0) {
            return Err(bad("steps", "must be at least 1"));
        }
        if self.steps.is_none() && self.epochs == 0 {
            return Err(bad("epochs", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(bad("lr", format!("must be a finite number >= 0, not {}", self.lr)));
        }
        if self.max_len < 2 {
            return Err(bad("max_len", format!("must be at least 2 tokens, not {}", self.max_len)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad("weight_decay", format!("must be >= 0, not {}", self.weight_decay)));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(bad("max_grad_norm", format!("must be 0 (off) or positive, not {}", self.max_grad_norm)));
        }
        if !(0.0..1.0).contains(&self.val_share) {
            return Err(bad("val_share", format!("must be in [0, 1), not {}", self.val_share)));
        }
        if self.method == Method::Full && !matches!(self.base, Base::Auto | Base::F32) {
            return Err(bad(
                "base",
                format!(
                    "`{}` keeps a frozen base compact, which needs LoRA: full fine-tuning trains f32 weights",
                    self.base
                ),
            ));
        }
        if self.method == Method::Lora {
            if self.lora_rank == 0 {
                return Err(bad("lora_rank", "must be at least 1"));
            }
            if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
                return Err(bad("lora_alpha", format!("must be positive, not {}", self.lora_alpha)));
            }
            if !(0.0..1.0).contains(&self.lora_dropout) {
                return Err(bad("lora_dropout", format!("must be in [0, 1), not {}", self.lora_dropout)));
            }
            if self.lora_targets.iter().all(|t| t.trim().is_empty()) {
                return Err(bad("lora_targets", "name at least one module (or all-linear)"));
            }
        }
        match (self.method, self.format) {
            (Method::Full, Format::Peft) => {
                Err(bad("format", "a PEFT adapter needs LoRA (method lora); full fine-tuning writes merged or gguf"))
            }
            _ => Ok(()),
        }
    }

    /// The format the trained model is written in: `auto` is a PEFT adapter for LoRA,
    /// and for full fine-tuning a Hugging Face folder over a Hugging Face base (`hf_base`),
    /// a GGUF file over a GGUF base.
    pub fn format(&self, hf_base: bool) -> Format {
        match (self.format, self.method) {
            (Format::Auto, Method::Lora) => Format::Peft,
            (Format::Auto, Method::Full) if hf_base => Format::Merged,
            (Format::Auto, Method::Full) => Format::Gguf,
            (f, _) => f,
        }
    }

    pub fn length(&self) -> Length {
        match self.steps {
            Some(n) => Length::Steps(n),
            None => Length::Epochs(self.epochs),
        }
    }

    /// The LoRA configuration (None for full fine-tuning), targets as given.
    pub fn lora(&self) -> Option<LoraConfig> {
        (self.method == Method::Lora).then(|| LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            rslora: self.rslora,
            targets: self.lora_targets.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
            seed: self.seed,
        })
    }

    /// What the training loop needs.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            loss: self.loss,
            adamw: AdamW {
                lr: self.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
            },
            batch: self.batch,
            grad_accum: self.grad_accum,
            micro_batch: self.micro_batch,
            length: self.length(),
            schedule: self.schedule,
            warmup: self.warmup,
            seed: self.seed,
            shuffle: true,
            eval_every: self.eval_every,
        }
    }

    /// These settings with the loop's part taken from `c` (a checkpoint without a
    /// `settings` entry carries only that part).
    pub fn with_run_config(&self, c: &RunConfig) -> Settings {
        Settings {
            loss: c.loss,
            lr: c.adamw.lr,
            weight_decay: c.adamw.weight_decay,
            // Old checkpoints wrote clipping off as infinity.
            max_grad_norm: if c.adamw.max_grad_norm.is_finite() { c.adamw.max_grad_norm } else { 0.0 },
            batch: c.batch,
            grad_accum: c.grad_accum,
            micro_batch: c.micro_batch,
            steps: match c.length {
                Length::Steps(n) => Some(n),
                Length::Epochs(_) => None,
            },
            epochs: match c.length {
                Length::Epochs(e) => e,
                Length::Steps(_) => self.epochs,
            },
            schedule: c.schedule,
            warmup: c.warmup,
            seed: c.seed,
            eval_every: c.eval_every,
            ..self.clone()
        }
    }

    /// Examples per forward/backward pass.
    pub fn micro(&self) -> usize {
        self.run_config().micro()
    }
}

/// A serde error with the key it is about.
fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let field = e.path().to_string();
    let inner = e.into_inner().to_string();
    // serde_json appends " at line 1 column N" to errors from text; values have none.
    let message = inner.split(" at line ").next().unwrap_or(&inner).to_string();
    if field == "." || field.is_empty() {
        Error::Usage(format!("settings: {message}"))
    } else {
        Error::Setting { field, message }
    }
}

/// An f32 as the f64 of its shortest decimal (`0.0003`, not `0.0003000000142492354`),
/// which reads back to the same f32.
fn short_f32<S: serde::Serializer>(x: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(x.to_string().parse::<f64>().unwrap_or(*x as f64))
}

/// Serde through `FromStr` / `Display` (the loss and schedule names users type).
mod as_str {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr<Err = crate::error::Error>,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: crate::error::Error| D::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_and_defaults_fill_in() {
        let s = Settings { steps: Some(17), lr: 3e-4, max_grad_norm: 0.0, ..Default::default() };
        let back = Settings::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(Settings::from_json(&json!({})).unwrap(), Settings::default());
        assert_eq!(s.to_json()["lr"], json!(0.0003), "shortest f32 decimal");
    }

    #[test]
    fn wrong_keys_and_values_are_named() {
        let e = Settings::from_json(&json!({"lr": "fast"})).unwrap_err().to_string();
        assert!(e.contains("`lr`"), "{e}");
        let e = Settings::from_json(&json!({"learning_rate": 1e-3})).unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
        let e = Settings::from_json(&json!({"loss": "mean"})).unwrap_err().to_string();
        assert!(e.contains("`loss`") && e.contains("per-example"), "{e}");
        let e = Settings::from_json(&json!({"batch": 2, "grad_accum": 3})).unwrap_err().to_string();
        assert!(e.contains("`grad_accum`"), "{e}");
        let e = Settings::from_json(&json!({"method": "full", "format": "peft"})).unwrap_err().to_string();
        assert!(e.contains("`format`"), "{e}");
    }

    #[test]
    fn clipping_off_survives_json() {
        let s = Settings { max_grad_norm: 0.0, ..Default::default() };
        let rc = s.run_config();
        assert_eq!(rc.adamw.max_grad_norm, 0.0);
        let back = RunConfig::from_json(&rc.to_json()).unwrap();
        assert_eq!(back.adamw.max_grad_norm, 0.0);
    }

    #[test]
    fn patches_keep_other_keys_and_switch_length() {
        let s = Settings { steps: Some(30), lr: 1e-3, ..Default::default() };
        let p = s.patched(&json!({"epochs": 2})).unwrap();
        assert_eq!((p.steps, p.epochs, p.lr), (None, 2, 1e-3));
        let p = s.patched(&json!({"batch": 4})).unwrap();
        assert_eq!((p.steps, p.batch), (Some(30), 4));
    }

    #[test]
    fn run_config_round_trips_through_settings() {
        let s = Settings { steps: Some(5), schedule: ScheduleKind::Cosine, warmup: 2, seed: 7, ..Default::default() };
        assert_eq!(Settings::default().with_run_config(&s.run_config()), s);
    }
}
