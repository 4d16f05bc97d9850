//! A run as a ready transformers + TRL (`SFTTrainer`) + PEFT + accelerate project
//! (`webtune export-run`): `train.py` (one template, `export_run/train.py.tmpl`, with the
//! [`Settings`] JSON embedded in a marked block that the script reads), the data as given,
//! accelerate configurations (one GPU, DDP, FSDP), pinned requirements and a README that
//! says what carries over and what does not. Plain Rust: no GPU, no model loaded.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::session::settings::{Method, Settings};
use crate::train::{Checkpoint, LossMode};

/// The script; `{{EXPORT_JSON}}` is replaced by the settings block's JSON.
pub const TRAIN_PY_TEMPLATE: &str = include_str!("export_run/train.py.tmpl");
const BEGIN: &str = "# ---- BEGIN WEBTUNE SETTINGS (written by webtune export-run) ----";
const END: &str = "# ---- END WEBTUNE SETTINGS ----";

/// The versions the exported project pins (checked on PyPI when the exporter was written).
pub const REQUIREMENTS: &str = "\
# Pinned for reproducibility; newer versions usually work.
torch==2.15.0
transformers==5.24.0
trl==1.16.0
peft==0.21.2
accelerate==1.15.0
datasets==5.2.0
";

/// The base model as the project names it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportModel {
    /// A Hugging Face id or folder for `from_pretrained`; None when it is not known (the
    /// user fills it in).
    pub id: Option<String>,
    /// What the user should know about it (a GGUF base, a folder path), for the README.
    pub note: Option<String>,
}

/// The Hugging Face id a model name (a GGUF file name, say) is known to come from.
pub fn known_hub_id(name: &str) -> Option<&'static str> {
    let n = name.to_lowercase();
    n.contains("smollm2-135m-instruct").then_some("HuggingFaceTB/SmolLM2-135M-Instruct")
}

impl ExportModel {
    /// From what `--model` was given: a `.gguf` file (its Hugging Face id when known), a
    /// folder, or a hub id.
    pub fn from_arg(arg: &str) -> ExportModel {
        if arg.to_lowercase().ends_with(".gguf") {
            let file = arg.rsplit(['/', '\\']).next().unwrap_or(arg);
            return match known_hub_id(file) {
                Some(id) => ExportModel {
                    id: Some(id.to_string()),
                    note: Some(format!(
                        "webtune trained on the GGUF file `{file}`; this project starts from `{id}`, the \
                         Hugging Face model it was converted from, in float32. The GGUF's quantization \
                         (e.g. Q4_1, dequantized to f32 on load) does not carry over: the weights here \
                         are the unquantized originals, so losses differ slightly from webtune's."
                    )),
                },
                None => ExportModel {
                    id: None,
                    note: Some(format!(
                        "webtune trained on the GGUF file `{file}`, whose Hugging Face source is not \
                         known. Set `\"model\"` in train.py's settings block to the Hugging Face id or \
                         folder of the model it was converted from (transformers can also read some \
                         GGUF files with `gguf_file=`, dequantized)."
                    )),
                },
            };
        }
        let is_dir = std::path::Path::new(arg).is_dir();
        ExportModel {
            id: Some(arg.to_string()),
            note: is_dir
                .then(|| format!("The base model is the local folder `{arg}`; copy it along or change `\"model\"`.")),
        }
    }
}

/// What a project is made from.
pub struct ExportInput<'a> {
    pub settings: &'a Settings,
    pub model: &'a ExportModel,
    /// The training JSONL, as given.
    pub train: &'a str,
    /// The evaluation JSONL, as given.
    pub eval: Option<&'a str>,
    /// A PEFT adapter folder to continue from (LoRA).
    pub adapter: Option<&'a str>,
}

/// The settings block's JSON: what train.py reads.
pub fn export_json(input: &ExportInput) -> Value {
    json!({
        "settings": input.settings.to_json(),
        "model": input.model.id,
        "model_note": input.model.note,
        "adapter": input.adapter,
        "train_file": "data/train.jsonl",
        "eval_file": input.eval.map(|_| "data/eval.jsonl"),
        "output_dir": "out",
    })
}

/// The project's files: (path relative to the project folder, contents).
pub fn export_run(input: &ExportInput) -> Result<Vec<(String, Vec<u8>)>> {
    input.settings.check()?;
    if input.adapter.is_some() && input.settings.method != Method::Lora {
        return Err(Error::Usage("continuing from an adapter needs LoRA (method lora)".into()));
    }
    let pretty = serde_json::to_string_pretty(&export_json(input)).map_err(|e| Error::Usage(e.to_string()))?;
    // Inside a Python r'''...''' string: no `'` may end it (JSON allows the escape).
    let block = pretty.replace('\'', "\\u0027");
    let train_py = TRAIN_PY_TEMPLATE.replace("{{EXPORT_JSON}}", &block);
    let mut files = vec![
        ("train.py".to_string(), train_py.into_bytes()),
        ("data/train.jsonl".to_string(), input.train.as_bytes().to_vec()),
    ];
    if let Some(e) = input.eval {
        files.push(("data/eval.jsonl".into(), e.as_bytes().to_vec()));
    }
    files.push(("requirements.txt".into(), REQUIREMENTS.as_bytes().to_vec()));
    files.push(("accelerate/single_gpu.yaml".into(), SINGLE_GPU.as_bytes().to_vec()));
    files.push(("accelerate/multi_gpu.yaml".into(), MULTI_GPU.as_bytes().to_vec()));
    files.push(("accelerate/fsdp.yaml".into(), FSDP.as_bytes().to_vec()));
    files.push(("README.md".into(), readme(input).into_bytes()));
    Ok(files)
}

/// The JSON of train.py's settings block.
pub fn embedded_json(train_py: &str) -> Result<Value> {
    let bad = || Error::Usage("train.py has no webtune settings block".into());
    let a = train_py.find(BEGIN).ok_or_else(bad)? + BEGIN.len();
    let b = train_py.find(END).ok_or_else(bad)?;
    let body = train_py.get(a..b).ok_or_else(bad)?;
    let (s, e) = (body.find("r'''").ok_or_else(bad)? + 4, body.rfind("'''").ok_or_else(bad)?);
    serde_json::from_str(body.get(s..e).ok_or_else(bad)?).map_err(|e| Error::Usage(format!("settings block: {e}")))
}

/// The settings a saved state (`OUT/state.safetensors`) was trained with: its `settings`
/// entry, else the defaults with its run configuration (as `Session::state_settings`).
pub fn state_settings(bytes: &[u8]) -> Result<Settings> {
    let ck = Checkpoint::parse(bytes)?;
    match ck.meta().get("settings") {
        Some(v) => Settings::from_json(v),
        None => Ok(Settings::default().with_run_config(&ck.run_config()?)),
    }
}

const SINGLE_GPU: &str = "\
# accelerate launch --config_file accelerate/single_gpu.yaml train.py
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
num_machines: 1
num_processes: 1
machine_rank: 0
gpu_ids: '0'
mixed_precision: 'no'
use_cpu: false
";

const MULTI_GPU: &str = "\
# Data parallel (DDP) on every GPU of this machine: set num_processes to their count.
# train.py divides the gradient accumulation by the process count, so a step still
# takes `batch` examples.
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
machine_rank: 0
gpu_ids: all
mixed_precision: 'no'
use_cpu: false
";

const FSDP: &str = "\
# Fully sharded data parallel (FSDP2): parameters, gradients and optimizer state sharded
# over num_processes GPUs, one transformer block per unit. For models that do not fit on
# one GPU with full fine-tuning.
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
gpu_ids: all
mixed_precision: 'no'
use_cpu: false
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: true
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
";

fn readme(input: &ExportInput) -> String {
    let s = input.settings;
    let what = match s.method {
        Method::Lora => format!(
            "LoRA (rank {}, alpha {}, dropout {}{}, targets {})",
            s.lora_rank,
            s.lora_alpha,
            s.lora_dropout,
            if s.rslora { ", rsLoRA" } else { "" },
            s.lora_targets.join(", ")
        ),
        Method::Full => "full fine-tuning".to_string(),
    };
    let loss = match s.loss {
        LossMode::PerExample => {
            "per-example SFT (each example's mean answer-token loss, averaged over the examples of \
                                 the optimizer step: a `SFTTrainer` subclass, `PerExampleSFTTrainer`, with the \
                                 step's example count plumbed through `num_items_in_batch`)"
        }
        LossMode::PerToken => {
            "per-token SFT (TRL's completion-only loss: the mean over every answer token of the \
                               optimizer step)"
        }
        LossMode::AllTokens => "all tokens (every token trained, the mean over the optimizer step)",
    };
    let model = match &input.model.id {
        Some(id) => format!("`{id}`"),
        None => "**not known: fill in `\"model\"` in train.py's settings block**".to_string(),
    };
    let mut r = format!(
        "# A webtune run as a transformers + TRL + PEFT project\n\n\
         Written by `webtune export-run`. Base model: {model}. Training: {what}; loss: {loss}.\n\n\
         ```sh\n\
         pip install -r requirements.txt\n\
         accelerate launch --config_file accelerate/single_gpu.yaml train.py\n\
         ```\n\n\
         `accelerate/multi_gpu.yaml` (DDP) and `accelerate/fsdp.yaml` (FSDP2) run it on several GPUs \
         (set `num_processes`). The trained model is written to `out/final` (a PEFT adapter for LoRA, a \
         Hugging Face folder for full fine-tuning).\n\n\
         `train.py` reads its settings from the block between the `WEBTUNE SETTINGS` markers: \
         `settings` is webtune's own settings JSON (the keys of `webtune train`'s flags), the data is \
         `data/train.jsonl`{}, exactly as given to webtune.\n\n",
        if input.eval.is_some() { " and `data/eval.jsonl`" } else { "" }
    );
    if let Some(n) = &input.model.note {
        r.push_str(&format!("**Base model.** {n}\n\n"));
    }
    if let Some(a) = input.adapter {
        r.push_str(&format!("Training continues from the PEFT adapter `{a}` (its rank, alpha and targets).\n\n"));
    }
    r.push_str(
        "## What carries over\n\n\
         - The data and its masks: train.py tokenizes each JSONL line as webtune does (src/data.rs): \
         the chat template for `messages` and conversational prompt/completion, the answer's content \
         and its end-of-turn token trained (every assistant turn, or the last with `last_turn_only`); \
         for a plain prompt/completion TRL's own rule (the completion starts where the prompt's tokens \
         and those of prompt + completion diverge) with EOS appended and trained; `text` all tokens \
         with EOS; pre-tokenized lines as they are. Longer examples than `max_len` (capped by the \
         model's positions) lose prompt tokens from the left first, then tokens from the right, as in \
         webtune; train.py does this itself, so TRL's own truncation is not used.\n\
         - The loss and its normalisation over the whole accumulated batch (every micro-batch and \
         process of one optimizer step).\n\
         - LoRA rank, alpha, dropout, rsLoRA and target modules (`all-linear` is PEFT's), or full \
         fine-tuning; AdamW (betas 0.9 / 0.999, eps 1e-8), clipping at `max_grad_norm` \
         (0: off in both), weight decay on matrices only (transformers leaves out biases and norms, \
         as webtune does), learning rate, schedule (linear, cosine, constant; webtune's multiplier is \
         transformers' `lr_lambda`, so the steps' learning rates are the same) with linear warm-up, \
         steps or epochs, examples per step (`batch`) as `per_device_train_batch_size` (webtune's \
         micro-batch) x `gradient_accumulation_steps` x processes, the seed, float32 weights.\n\n\
         ## What does not carry over, and what is used instead\n\n\
         - A quantized GGUF base: transformers starts from the Hugging Face model it came from (see \
         above), unquantized.\n\
         - Device settings: webtune's activation recomputation (`recompute`) and micro-batch size are \
         about GPU memory. Here the micro-batch is `per_device_train_batch_size`; turn on \
         `gradient_checkpointing` in train.py for the memory of recomputation (neither changes results).\n\
         - Packing (`pack`): webtune packs examples into rows with per-example positions and attention, \
         which gives exactly the padded batch's loss and gradient; train.py pads each micro-batch instead \
         (the same numbers, more padding).\n\
         - The data order and LoRA's random initialization: seeded with the same seed, but by torch's \
         generators, not webtune's, so the runs are not the same bit for bit.\n\
         - Validation: an evaluation file is used as given; a `val_share` split is a seeded split of the \
         same share, not webtune's examples. The page's exact-match score and samples are not exported.\n\
         - The output format (`format`): train.py writes a PEFT adapter or a Hugging Face folder; for \
         GGUF use llama.cpp's `convert_hf_to_gguf.py` on the merged model.\n",
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_the_block() {
        let s = Settings { steps: Some(3), lr: 3e-4, lora_targets: vec!["q_proj".into()], ..Default::default() };
        let m = ExportModel { id: Some("o'brien/model".into()), note: None };
        let input = ExportInput { settings: &s, model: &m, train: "{}\n", eval: None, adapter: None };
        let files = export_run(&input).unwrap();
        let py = std::str::from_utf8(&files[0].1).unwrap();
        let v = embedded_json(py).unwrap();
        assert_eq!(Settings::from_json(&v["settings"]).unwrap(), s);
        assert_eq!(v["model"], "o'brien/model");
    }

    #[test]
    fn gguf_names_its_source() {
        assert_eq!(
            ExportModel::from_arg("models/SmolLM2-135M-Instruct-Q4_1.gguf").id.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        let m = ExportModel::from_arg("x/other.gguf");
        assert!(m.id.is_none() && m.note.unwrap().contains("not known"));
    }
}
