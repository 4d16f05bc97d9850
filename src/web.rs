//! The wasm-bindgen facade, and nothing else: what `www/worker.js` calls. One `Session`
//! per worker owns the GPU device, the model (with its tokenizer), the dataset, the run's
//! settings and the run itself, which is `train::Run`, the same loop the command line
//! drives: schedule, data order, accumulation, validation and checkpoints are one code.
//!
//! Every call returns `Result<_, JsError>` with the engine's own message (file, line,
//! tensor, limit) so the page can show it as it is; nothing here panics on bad input (a
//! panic hook still logs to the console, should the engine ever panic).
//!
//! The life of a session: `load_model` (GGUF or a Hugging Face folder, with LoRA adapters
//! when asked), `set_data` (+ `set_eval`), `configure`, then `step` until `plan().done`,
//! with `validate`, `evaluate`, `sample` and `generate` in between, and `export_*` /
//! `save_state` / `restore_state` at any step boundary.

use std::cell::RefCell;

use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::data::{self, DataOptions};
use crate::error::Error;
use crate::export::gguf::{export_gguf, GgufDtype, GgufExport};
use crate::export::merged::export_merged;
use crate::export::peft::export_adapter;
use crate::gpu::Gpu;
use crate::load::gguf_model::{model_from_gguf_bytes_lora, GgufInfo};
use crate::load::{hf_tokenizer, model_from_hf_bytes_lora, shard_names};
use crate::model::generate::{Decoder, GenerateConfig, Sampling};
use crate::model::lora::{LoraConfig, ALL_LINEAR};
use crate::model::{memory, Model};
use crate::ops::adamw::AdamW;
use crate::tokenize::{Message, Tokenizer};
use crate::train::checkpoint::Checkpoint;
use crate::train::run::{split_validation, truncate, Length, Run, RunConfig, StepReport};
use crate::train::schedule::ScheduleKind;
use crate::train::{Example, LossMode, TrainConfig, Trainer};

thread_local! {
    /// One device per worker while it lives: the trainer borrows it for `'static`. After
    /// a device loss `Session.create()` requests a fresh one (the lost one is leaked; it
    /// holds no GPU memory any more).
    static GPU: RefCell<Option<&'static Gpu>> = const { RefCell::new(None) };
}

/// Log panics to the console (what `console_error_panic_hook` does), once.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&JsValue::from_str(&format!("webtune panicked: {info}")));
        }))
    });
}

type JsResult<T> = std::result::Result<T, JsError>;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

fn usage(msg: impl Into<String>) -> JsError {
    JsError::new(&msg.into())
}

/// A JSON value as a plain JS object (NaN and infinities become null).
fn to_js(v: Value) -> JsValue {
    js_sys::JSON::parse(&v.to_string()).unwrap_or(JsValue::NULL)
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    if !obj.is_object() {
        return None;
    }
    Reflect::get(obj, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn num(obj: &JsValue, key: &str) -> JsResult<Option<f64>> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => match v.as_f64().or_else(|| v.as_string().and_then(|s| s.trim().parse().ok())) {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(usage(format!("setting `{key}` must be a number"))),
        },
    }
}

fn whole(obj: &JsValue, key: &str, min: f64) -> JsResult<Option<u64>> {
    match num(obj, key)? {
        Some(x) if x.fract() != 0.0 || x < min || x > 1e15 => {
            Err(usage(format!("setting `{key}` must be a whole number of at least {min}, got {x}")))
        }
        other => Ok(other.map(|x| x as u64)),
    }
}

fn text(obj: &JsValue, key: &str) -> Option<String> {
    get(obj, key).and_then(|v| v.as_string())
}

fn flag(obj: &JsValue, key: &str) -> Option<bool> {
    get(obj, key).and_then(|v| v.as_bool())
}

fn bytes_of(v: &JsValue) -> Option<Vec<u8>> {
    v.is_instance_of::<Uint8Array>().then(|| Uint8Array::from(v.clone()).to_vec())
}

/// `{name: Uint8Array}` for the page's downloads.
fn files_object(files: &[(&str, &[u8])]) -> JsValue {
    let o = Object::new();
    for (name, bytes) in files {
        let _ = Reflect::set(&o, &JsValue::from_str(name), &Uint8Array::from(*bytes));
    }
    o.into()
}

/// What came with the weights: the exporters and the tokenizer need it.
struct ModelMeta {
    name: String,
    tokenizer: Option<Tokenizer>,
    /// The HF config.json (folders) for the merged export.
    config_json: Option<String>,
    /// HF tokenizer files, copied into the merged export as they came.
    tokenizer_files: Vec<(String, Vec<u8>)>,
    gguf: Option<GgufInfo>,
    lora: Option<LoraConfig>,
}

/// The page's settings beyond `RunConfig`: how examples are cut and split.
#[derive(Clone, Debug, PartialEq)]
struct DataSettings {
    max_len: usize,
    /// Share of the training file held out for the validation loss when no separate
    /// evaluation file is given.
    val_share: f64,
    /// At most this many held-out examples for the validation loss (0 = all): each
    /// validation is a forward pass over them, slow on a software adapter.
    val_limit: usize,
}

/// The worker's handle on the engine. Create with `await Session.create()`.
#[wasm_bindgen]
pub struct Session {
    gpu: &'static Gpu,
    meta: Option<ModelMeta>,
    /// The model while no run holds it (then it is `run.trainer.model`).
    model: Option<Model>,
    run: Option<Run<'static>>,
    /// The dataset as parsed (untruncated), its name, and the held-out evaluation file.
    examples: Vec<Example>,
    data_name: String,
    data_warning: Option<String>,
    eval: Vec<Example>,
    eval_name: String,
    cfg: RunConfig,
    ds: DataSettings,
}

fn default_run_config() -> RunConfig {
    RunConfig {
        loss: LossMode::PerExample,
        adamw: AdamW { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 },
        batch: 4,
        grad_accum: 1,
        micro_batch: None,
        length: Length::Steps(30),
        schedule: ScheduleKind::Cosine,
        warmup: 3,
        seed: 0,
        shuffle: true,
        eval_every: 10,
    }
}

#[wasm_bindgen]
impl Session {
    /// Request the GPU (once per worker, or again after the device was lost) and make an
    /// empty session.
    pub async fn create() -> JsResult<Session> {
        install_panic_hook();
        let existing = GPU.with(|g| *g.borrow()).filter(|g| !g.is_lost());
        let gpu = match existing {
            Some(g) => g,
            None => {
                let g: &'static Gpu = Box::leak(Box::new(Gpu::new().await.map_err(js_err)?));
                GPU.with(|c| *c.borrow_mut() = Some(g));
                g
            }
        };
        Ok(Session {
            gpu,
            meta: None,
            model: None,
            run: None,
            examples: Vec::new(),
            data_name: String::new(),
            data_warning: None,
            eval: Vec::new(),
            eval_name: String::new(),
            cfg: default_run_config(),
            ds: DataSettings { max_len: 256, val_share: 0.1, val_limit: 0 },
        })
    }

    /// The adapter: name, backend, type, whether it is a software rasterizer, the
    /// largest buffer one binding can see, and whether the device is lost.
    pub fn adapter_info(&self) -> JsValue {
        let i = &self.gpu.info;
        to_js(json!({
            "name": i.name, "backend": i.backend, "device_type": i.device_type, "software": i.software,
            "max_binding_bytes": self.gpu.max_binding(),
            "max_buffer_bytes": self.gpu.limits.max_buffer_size,
            "matmul": if self.gpu.matmul_reg { "register-blocked" } else { "tiled" },
            "lost": self.gpu.is_lost(),
        }))
    }

    /// Whether the GPU device was lost (the page then starts a new session and resumes
    /// from its last checkpoint).
    pub fn device_lost(&self) -> bool {
        self.gpu.is_lost()
    }

    /// Destroy the device, as a driver reset would: the test of the page's recovery.
    pub fn simulate_device_loss(&self) {
        self.gpu.device.destroy();
    }

    /// Load a model from its files, `{name: Uint8Array}`: one `.gguf`, or a Hugging Face
    /// folder (`config.json`, `model.safetensors` or the shards of
    /// `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`,
    /// `chat_template.jinja`). Folder prefixes in names are ignored. `lora`, when given,
    /// is `{rank, alpha, dropout, rslora, targets: "all-linear" | [names] | "a,b"}`: the
    /// base is frozen and adapters are attached. Replaces the model and run before.
    pub fn load_model(&mut self, name: &str, files: &JsValue, lora: &JsValue) -> JsResult<JsValue> {
        if !files.is_object() {
            return Err(usage("load_model expects an object of file name -> Uint8Array"));
        }
        let lora = lora_config(lora, self.cfg.seed)?;
        let mut all: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in Object::entries(&Object::from(files.clone())).iter() {
            let pair = Array::from(&entry);
            let path = pair.get(0).as_string().unwrap_or_default();
            let base = path.rsplit(['/', '\\']).next().unwrap_or(&path).to_string();
            let bytes = bytes_of(&pair.get(1))
                .ok_or_else(|| usage(format!("{path}: expected the file's bytes (a Uint8Array)")))?;
            all.push((base, bytes));
        }
        // Free the GPU memory of the model before first.
        self.run = None;
        self.model = None;
        self.meta = None;
        let find = |n: &str| all.iter().find(|(b, _)| b == n).map(|(_, d)| d.as_slice());
        let (model, meta) = if let Some((file, bytes)) = all.iter().find(|(b, _)| b.to_lowercase().ends_with(".gguf")) {
            let (model, info) = model_from_gguf_bytes_lora(self.gpu, file, bytes, lora.as_ref()).map_err(js_err)?;
            let tok = Tokenizer::from_gguf(&info.tokenizer, info.chat_template.as_deref()).map_err(js_err)?;
            let meta = ModelMeta {
                name: name.to_string(),
                tokenizer: Some(tok),
                config_json: None,
                tokenizer_files: Vec::new(),
                gguf: Some(info),
                lora,
            };
            (model, meta)
        } else {
            let config = find("config.json").ok_or_else(|| {
                usage("the model files need a config.json (a Hugging Face model folder) or a .gguf file")
            })?;
            let config = String::from_utf8(config.to_vec())
                .map_err(|_| js_err(Error::Config("config.json is not UTF-8 text".into())))?;
            let names = match find("model.safetensors.index.json") {
                Some(index) if find("model.safetensors").is_none() => {
                    shard_names("model.safetensors.index.json", index).map_err(js_err)?
                }
                _ => all.iter().filter(|(b, _)| b.ends_with(".safetensors")).map(|(b, _)| b.clone()).collect(),
            };
            if names.is_empty() {
                return Err(usage("the model files need a .safetensors file next to config.json"));
            }
            let mut shards = Vec::new();
            for n in &names {
                let d = find(n).ok_or_else(|| usage(format!("{n} (listed in the index) is missing")))?;
                shards.push((n.as_str(), d));
            }
            let model = model_from_hf_bytes_lora(self.gpu, &config, &shards, lora.as_ref()).map_err(js_err)?;
            let own = |n: &str| find(n).map(|d| d.to_vec());
            let tok = hf_tokenizer(own("tokenizer.json"), own("tokenizer_config.json"), own("chat_template.jinja"))
                .map_err(js_err)?;
            let keep = [
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "special_tokens_map.json",
                "generation_config.json",
            ];
            let tokenizer_files =
                all.iter().filter(|(b, _)| keep.contains(&b.as_str())).map(|(b, d)| (b.clone(), d.clone())).collect();
            let meta = ModelMeta {
                name: name.to_string(),
                tokenizer: tok,
                config_json: Some(config),
                tokenizer_files,
                gguf: None,
                lora,
            };
            (model, meta)
        };
        drop(all);
        if let Some(tok) = &meta.tokenizer {
            if tok.vocab_size() > model.cfg.vocab {
                web_sys::console::warn_1(&JsValue::from_str(&format!(
                    "{name}: the tokenizer has {} tokens, the model's embedding {}",
                    tok.vocab_size(),
                    model.cfg.vocab
                )));
            }
        }
        self.model = Some(model);
        self.meta = Some(meta);
        // A dataset read before applies to the new model when its tokens fit.
        self.examples.clear();
        self.eval.clear();
        Ok(self.model_info())
    }

    /// What is loaded (`null` when nothing is): architecture, sizes, parameter counts,
    /// LoRA, the tokenizer and chat template, and the GPU memory at the current settings.
    pub fn model_info(&self) -> JsValue {
        let (Some(m), Some(meta)) = (self.model_ref(), &self.meta) else { return JsValue::NULL };
        let c = &m.cfg;
        let p = &m.params;
        to_js(json!({
            "name": meta.name,
            "arch": format!("{:?}", c.arch),
            "vocab": c.vocab, "hidden": c.hidden, "layers": c.layers, "heads": c.heads,
            "kv_heads": c.kv_heads, "head_dim": c.head_dim, "ffn": c.ffn, "max_seq": m.max_seq(),
            "tied_embeddings": c.tied,
            "params": p.num_params(), "trainable": p.num_trainable(),
            "method": if meta.lora.is_some() { "lora" } else { "full" },
            "lora": meta.lora.as_ref().map(|l| json!({"rank": l.rank, "alpha": l.alpha, "dropout": l.dropout, "rslora": l.rslora, "targets": l.targets})),
            "tokenizer": meta.tokenizer.is_some(),
            "chat_template": meta.tokenizer.as_ref().is_some_and(|t| t.chat_template().is_some()),
            "source": if meta.gguf.is_some() { "gguf" } else { "hf" },
            "memory": self.memory_json(),
            "eos_token_ids": c.eos_token_ids,
        }))
    }

    /// Set the training data from a JSONL text in any of the loader's formats
    /// (`prompt`/`completion`, `messages`, `text`, or pre-tokenized `input_ids`).
    /// Errors name `name:line` and the field. Returns `data_info()`.
    pub fn set_data(&mut self, name: &str, text: &str) -> JsResult<JsValue> {
        let examples = self.read_examples(name, text)?;
        if examples.is_empty() {
            return Err(usage(format!("{name}: no examples (the file is empty)")));
        }
        self.examples = examples;
        self.data_name = name.to_string();
        self.drop_run();
        Ok(self.data_info())
    }

    /// Set the held-out evaluation examples (scored by `evaluate` and used for the
    /// validation loss instead of a share of the training data). An empty text clears it.
    pub fn set_eval(&mut self, name: &str, text: &str) -> JsResult<JsValue> {
        self.eval = if text.trim().is_empty() { Vec::new() } else { self.read_examples(name, text)? };
        self.eval_name = if self.eval.is_empty() { String::new() } else { name.to_string() };
        self.drop_run();
        Ok(self.data_info())
    }

    /// Counts of the dataset as it will train: examples, train/validation split, tokens,
    /// trained tokens, truncation.
    pub fn data_info(&self) -> JsValue {
        let (train, valid) = self.split().unwrap_or_default();
        let toks = |v: &[Example]| v.iter().map(|e| e.ids.len()).sum::<usize>();
        let trained = |v: &[Example]| v.iter().map(|e| e.trained.iter().skip(1).filter(|&&t| t).count()).sum::<usize>();
        let longest = self.examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        to_js(json!({
            "name": self.data_name, "examples": self.examples.len(), "train": train.len(), "val": valid.len(),
            "eval_name": self.eval_name, "eval": self.eval.len(),
            "tokens": toks(&self.examples), "trained_tokens": trained(&self.examples), "longest": longest,
            "truncated": self.examples.iter().filter(|e| e.ids.len() > self.ds.max_len).count(),
            "max_len": self.ds.max_len,
            "warning": self.data_warning,
        }))
    }

    /// Example `index` of the dataset, token by token: `{origin, tokens: [{id, text,
    /// trained}]}` (the mask preview), under the current loss mode.
    pub fn preview(&self, index: usize) -> JsResult<JsValue> {
        let e = self.examples.get(index).ok_or_else(|| usage(format!("there is no example {}", index + 1)))?;
        let all = self.cfg.loss == LossMode::AllTokens;
        let tokens: Vec<Value> = e
            .ids
            .iter()
            .zip(&e.trained)
            .enumerate()
            .map(|(i, (&id, &t))| {
                let text = self.meta.as_ref().and_then(|m| m.tokenizer.as_ref()).map(|t| t.token_text(id));
                json!({"id": id, "text": text, "trained": i > 0 && (t || all), "cut": i >= self.ds.max_len})
            })
            .collect();
        Ok(to_js(json!({"origin": e.origin, "index": index, "count": self.examples.len(), "tokens": tokens})))
    }

    /// Set the run's settings from a plain object; missing keys keep their value. Keys:
    /// loss ("per-example" | "per-token" | "all-tokens"), lr, schedule ("constant" |
    /// "linear" | "cosine"), warmup, batch, grad_accum, steps | epochs, max_len,
    /// max_grad_norm (0 = off), weight_decay, seed, val_share (0..0.5), val_limit (the
    /// validation loss over at most this many held-out examples; 0 = all), eval_every.
    /// A run in progress is dropped (the model keeps its weights) unless nothing changed.
    /// Returns `plan()`.
    pub fn configure(&mut self, opts: &JsValue) -> JsResult<JsValue> {
        let mut c = self.cfg.clone();
        let mut ds = self.ds.clone();
        if let Some(name) = text(opts, "loss") {
            c.loss = name.parse().map_err(js_err)?;
        }
        if let Some(name) = text(opts, "schedule") {
            c.schedule = name.parse().map_err(js_err)?;
        }
        if let Some(x) = num(opts, "lr")? {
            if !(x > 0.0 && x < 1.0) {
                return Err(usage(format!("the learning rate must be between 0 and 1, got {x}")));
            }
            c.adamw.lr = x as f32;
        }
        if let Some(x) = whole(opts, "warmup", 0.0)? {
            c.warmup = x;
        }
        if let Some(x) = whole(opts, "batch", 1.0)? {
            c.batch = x as usize;
        }
        if let Some(x) = whole(opts, "grad_accum", 1.0)? {
            c.grad_accum = x as usize;
        }
        match (whole(opts, "steps", 1.0)?, whole(opts, "epochs", 1.0)?) {
            (Some(_), Some(_)) => return Err(usage("give steps or epochs, not both")),
            (Some(n), None) => c.length = Length::Steps(n),
            (None, Some(e)) => c.length = Length::Epochs(e),
            (None, None) => {}
        }
        if let Some(x) = whole(opts, "max_len", 2.0)? {
            ds.max_len = x as usize;
        }
        if let Some(x) = num(opts, "max_grad_norm")? {
            if x < 0.0 {
                return Err(usage("the clipping norm must be 0 (off) or positive"));
            }
            c.adamw.max_grad_norm = if x == 0.0 { f32::INFINITY } else { x as f32 };
        }
        if let Some(x) = num(opts, "weight_decay")? {
            if !(0.0..1.0).contains(&x) {
                return Err(usage(format!("weight decay must be in [0, 1), got {x}")));
            }
            c.adamw.weight_decay = x as f32;
        }
        if let Some(x) = whole(opts, "seed", 0.0)? {
            c.seed = x;
        }
        if let Some(x) = num(opts, "val_share")? {
            if !(0.0..=0.5).contains(&x) {
                return Err(usage(format!("the validation share must be between 0 and 0.5, got {x}")));
            }
            ds.val_share = x;
        }
        if let Some(x) = whole(opts, "val_limit", 0.0)? {
            ds.val_limit = x as usize;
        }
        if let Some(x) = whole(opts, "eval_every", 0.0)? {
            c.eval_every = x;
        }
        if c.grad_accum > c.batch {
            c.grad_accum = c.batch;
        }
        c.check().map_err(js_err)?;
        // The same settings again (a page re-sending its form after a restored state)
        // keep the run and its step.
        let unchanged = c.to_json() == self.cfg.to_json() && ds == self.ds;
        self.cfg = c;
        self.ds = ds;
        if !unchanged {
            self.drop_run();
        }
        Ok(self.plan())
    }

    /// The run as configured and where it stands: steps, batch, accumulation, schedule,
    /// the memory estimate, and whether it fits the adapter.
    pub fn plan(&self) -> JsValue {
        let c = self.run.as_ref().map(|r| r.config()).unwrap_or(&self.cfg);
        let n_train = self.split().map(|(t, _)| t.len()).unwrap_or(0);
        let per_epoch = n_train.div_ceil(c.batch.max(1)).max(1);
        let total = c.total_steps(n_train.max(1));
        to_js(json!({
            "total_steps": total, "steps_per_epoch": per_epoch,
            "epochs": total as f64 / per_epoch as f64,
            "batch": c.batch, "micro_batch": c.micro(), "grad_accum": c.batch.div_ceil(c.micro()),
            "loss": c.loss.to_string(), "lr": c.adamw.lr, "schedule": c.schedule.to_string(), "warmup": c.warmup,
            "max_len": self.ds.max_len, "eval_every": c.eval_every, "seed": c.seed.to_string(),
            "done": self.step_count(),
            "finished": self.run.as_ref().is_some_and(|r| r.is_done()),
            "memory": self.memory_json(),
        }))
    }

    /// Optimizer steps applied so far in this run.
    pub fn step_count(&self) -> u64 {
        self.run.as_ref().map(|r| r.step()).unwrap_or(0)
    }

    /// One optimizer step of the run (started on first call from the current model,
    /// data and settings). Returns `{step, total_steps, epoch, loss, lr, grad_norm,
    /// examples, tokens, targets, ms, tokens_per_s, valid_loss}`, or `null` when the run
    /// is complete. On an error nothing advances.
    pub async fn step(&mut self) -> JsResult<JsValue> {
        self.ensure_run()?;
        let run = self.run.as_mut().ok_or_else(|| usage("no run"))?;
        match run.next_step().await.map_err(js_err)? {
            Some(r) => Ok(report_json(&r)),
            None => Ok(JsValue::NULL),
        }
    }

    /// The validation loss (held-out evaluation file, else the validation share, else
    /// the training set), in the configured loss mode. `{loss, examples, split, ms}`.
    pub async fn validate(&mut self) -> JsResult<JsValue> {
        let (train, valid) = self.split()?;
        let (set, split) = match (valid.is_empty(), train.is_empty()) {
            (false, _) => (valid, "validation"),
            (true, false) => (train, "train"),
            (true, true) => return Err(usage("load a dataset first")),
        };
        let mode = self.cfg.loss;
        let t0 = now_ms();
        let n = set.len();
        let loss = match self.run.as_mut() {
            Some(run) => run.trainer.score(&set, mode).await.map_err(js_err)?.1,
            None => {
                let model = self.model.take().ok_or_else(|| usage("load a model first"))?;
                let micro = self.cfg.micro();
                let mut t = Trainer::new(self.gpu, model, TrainConfig { micro_batch: micro, ..Default::default() })
                    .map_err(js_err)?;
                let r = t.score(&set, mode).await;
                self.model = Some(t.into_model());
                r.map_err(js_err)?.1
            }
        };
        Ok(to_js(json!({"loss": loss, "examples": n, "split": split, "ms": now_ms() - t0, "step": self.step_count()})))
    }

    /// Exact match on up to `limit` held-out examples (the evaluation file, else the
    /// validation share): the model is given each example's prompt (the tokens before its
    /// first trained token), generates greedily, and its answer (special tokens removed,
    /// trimmed) must equal the example's. `{score, correct, total, items: [{prompt,
    /// expected, got, ok}], ms}`.
    pub async fn evaluate(&mut self, limit: usize) -> JsResult<JsValue> {
        let tok = self.tokenizer()?;
        let set: Vec<Example> = if self.eval.is_empty() { self.split()?.1 } else { self.eval.clone() };
        let items: Vec<(Vec<u32>, Vec<u32>)> = set
            .iter()
            .filter_map(|e| {
                let first = e.trained.iter().enumerate().skip(1).find(|(_, &t)| t)?.0;
                Some((e.ids[..first].to_vec(), e.ids[first..].to_vec()))
            })
            .take(limit.max(1))
            .collect();
        if items.is_empty() {
            return Err(usage(
                "exact match needs held-out examples with a prompt and an answer (an evaluation file or a validation share)",
            ));
        }
        let t0 = now_ms();
        let model = self.model_ref().ok_or_else(|| usage("load a model first"))?;
        let longest = items.iter().map(|(p, a)| p.len() + a.len() + 8).max().unwrap_or(1).min(model.max_seq());
        let mut dec = Decoder::new(self.gpu, model, 1, longest).map_err(js_err)?;
        let mut out = Vec::new();
        let mut correct = 0;
        for (prompt, answer) in &items {
            let cfg = GenerateConfig {
                max_new_tokens: (answer.len() + 8).min(longest.saturating_sub(prompt.len()).max(1)),
                sampling: Sampling::greedy(),
                stop_ids: tok.eos_ids(),
                capacity: None,
            };
            let g = dec.generate(prompt, &cfg, |_| true).await.map_err(js_err)?;
            let want = tok.decode_skip_special(answer).map_err(js_err)?.trim().to_string();
            let got = tok.decode_skip_special(&g.tokens).map_err(js_err)?.trim().to_string();
            let ok = got == want;
            correct += ok as usize;
            let prompt_text = tok.decode_skip_special(prompt).map_err(js_err)?;
            out.push(json!({"prompt": prompt_text, "expected": want, "got": got, "ok": ok}));
        }
        Ok(to_js(json!({
            "score": correct as f64 / items.len() as f64, "correct": correct, "total": items.len(),
            "items": out, "ms": now_ms() - t0, "step": self.step_count(),
        })))
    }

    /// Generate a reply and stream it: `input` is a prompt string, or an array of chat
    /// messages `[{role, content}]` put through the model's chat template. `opts`:
    /// `{max_new_tokens, temperature, top_k, top_p, seed, chat}` (`chat` applies the
    /// template to a string prompt). `on_text(piece)` receives the text as it decodes;
    /// returning `false` stops. Returns `{text, tokens, stop, ms, tokens_per_s}`.
    pub async fn generate(&mut self, input: &JsValue, opts: &JsValue, on_text: &Function) -> JsResult<JsValue> {
        let tok = self.tokenizer()?;
        let chat = flag(opts, "chat").unwrap_or(false);
        let (prompt_text, special) = if Array::is_array(input) {
            let messages: Vec<Message> = Array::from(input)
                .iter()
                .map(|m| {
                    let role = text(&m, "role").ok_or_else(|| usage("each chat message needs a `role`"))?;
                    let content = text(&m, "content").ok_or_else(|| usage("each chat message needs a `content`"))?;
                    Ok(Message::new(role, content))
                })
                .collect::<JsResult<_>>()?;
            (tok.require_chat_template().map_err(js_err)?.render(&messages, true).map_err(js_err)?, false)
        } else {
            let s = input.as_string().ok_or_else(|| usage("generate expects a prompt string or chat messages"))?;
            if chat {
                (
                    tok.require_chat_template()
                        .map_err(js_err)?
                        .render(&[Message::new("user", s)], true)
                        .map_err(js_err)?,
                    false,
                )
            } else {
                (s, true)
            }
        };
        let ids = tok.encode(&prompt_text, special).map_err(js_err)?;
        let max_new = whole(opts, "max_new_tokens", 1.0)?.unwrap_or(128) as usize;
        let sampling = Sampling {
            temperature: num(opts, "temperature")?.unwrap_or(0.0) as f32,
            top_k: whole(opts, "top_k", 0.0)?.unwrap_or(0) as usize,
            top_p: num(opts, "top_p")?.unwrap_or(1.0) as f32,
            seed: whole(opts, "seed", 0.0)?.unwrap_or(0),
        };
        let cfg = GenerateConfig { max_new_tokens: max_new, sampling, stop_ids: tok.eos_ids(), capacity: None };
        let model = self.model_ref().ok_or_else(|| usage("load a model first"))?;
        let t0 = now_ms();
        let mut out: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let g = crate::model::generate::generate(self.gpu, model, &ids, &cfg, |id| {
            out.push(id);
            // Stream what decodes cleanly so far (a character may span tokens).
            match tok.decode_skip_special(&out) {
                Ok(s) if s.len() > shown && !s.ends_with('\u{fffd}') => {
                    let piece = s[shown..].to_string();
                    shown = s.len();
                    on_text
                        .call1(&JsValue::NULL, &JsValue::from_str(&piece))
                        .map(|r| r.as_bool() != Some(false))
                        .unwrap_or(true)
                }
                _ => true,
            }
        })
        .await
        .map_err(js_err)?;
        let ms = now_ms() - t0;
        let text = tok.decode_skip_special(&g.tokens).map_err(js_err)?;
        Ok(to_js(json!({
            "text": text, "tokens": g.tokens.len(), "prompt_tokens": ids.len(), "stop": format!("{:?}", g.stop),
            "ms": ms, "tokens_per_s": g.tokens.len() as f64 / (ms / 1e3).max(1e-9),
        })))
    }

    /// The LoRA adapter as PEFT saves it: `{"adapter_config.json", "adapter_model.safetensors"}`.
    pub async fn export_peft(&self) -> JsResult<JsValue> {
        let meta = self.meta.as_ref().ok_or_else(|| usage("load a model first"))?;
        let model = self.model_ref().ok_or_else(|| usage("load a model first"))?;
        if meta.lora.is_none() {
            return Err(usage("a PEFT adapter needs LoRA training; this model trains all its weights (download the merged model instead)"));
        }
        let base = base_model_id(&meta.name);
        let f = export_adapter(self.gpu, model, &base).await.map_err(js_err)?;
        Ok(files_object(&[
            ("adapter_config.json", f.config_json.as_bytes()),
            ("adapter_model.safetensors", &f.safetensors),
        ]))
    }

    /// The trained model with adapters merged, as a Hugging Face folder
    /// `{config.json, model.safetensors, tokenizer files}` (Hugging Face bases only).
    pub async fn export_merged(&self) -> JsResult<JsValue> {
        let meta = self.meta.as_ref().ok_or_else(|| usage("load a model first"))?;
        let model = self.model_ref().ok_or_else(|| usage("load a model first"))?;
        let config = meta.config_json.as_deref().ok_or_else(|| {
            usage("a Hugging Face folder needs a Hugging Face base (config.json); this model came from a GGUF, so download the merged GGUF instead")
        })?;
        let f = export_merged(self.gpu, model, config).await.map_err(js_err)?;
        let mut files: Vec<(&str, &[u8])> =
            vec![("config.json", f.config_json.as_bytes()), ("model.safetensors", &f.safetensors)];
        for (n, d) in &meta.tokenizer_files {
            files.push((n.as_str(), d.as_slice()));
        }
        Ok(files_object(&files))
    }

    /// The trained model with adapters merged, as one GGUF file (F16, or F32 when
    /// `f32`), with the tokenizer metadata of a GGUF base.
    pub async fn export_gguf(&self, f32: bool) -> JsResult<Uint8Array> {
        let meta = self.meta.as_ref().ok_or_else(|| usage("load a model first"))?;
        let model = self.model_ref().ok_or_else(|| usage("load a model first"))?;
        let opts = GgufExport {
            dtype: if f32 { GgufDtype::F32 } else { GgufDtype::F16 },
            name: "webtune",
            tokenizer: meta.gguf.as_ref().map(|g| &g.tokenizer),
            chat_template: meta.gguf.as_ref().and_then(|g| g.chat_template.as_deref()),
        };
        let bytes = export_gguf(self.gpu, model, &opts).await.map_err(js_err)?;
        Ok(Uint8Array::from(bytes.as_slice()))
    }

    /// The training state (trainable weights, AdamW moments, step, schedule, data order,
    /// RNG) as bytes; restore with `restore_state` on the same model, data and settings.
    pub async fn save_state(&mut self) -> JsResult<Uint8Array> {
        self.ensure_run()?;
        let run = self.run.as_ref().ok_or_else(|| usage("no run"))?;
        let bytes = run.save().await.map_err(js_err)?;
        Ok(Uint8Array::from(bytes.as_slice()))
    }

    /// Continue from a state saved by `save_state`: its run settings replace the
    /// current ones (returned as `plan()`); the model and training data must be those of
    /// the saved run, and anything that differs is named.
    pub fn restore_state(&mut self, bytes: &[u8]) -> JsResult<JsValue> {
        let ck = Checkpoint::parse(bytes).map_err(js_err)?;
        let cfg = ck.run_config().map_err(js_err)?;
        self.cfg = cfg;
        self.drop_run();
        self.ensure_run()?;
        let run = self.run.as_mut().ok_or_else(|| usage("no run"))?;
        run.restore(&ck).map_err(js_err)?;
        Ok(self.plan())
    }
}

/// Private helpers (not exported).
impl Session {
    fn model_ref(&self) -> Option<&Model> {
        self.run.as_ref().map(|r| &r.trainer.model).or(self.model.as_ref())
    }

    fn tokenizer(&self) -> JsResult<&Tokenizer> {
        let meta = self.meta.as_ref().ok_or_else(|| usage("load a model first"))?;
        meta.tokenizer.as_ref().ok_or_else(|| usage(format!("{} came without a tokenizer (tokenizer.json)", meta.name)))
    }

    /// End the run, keeping the model with its current weights.
    fn drop_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.model = Some(run.into_trainer().into_model());
        }
    }

    /// JSONL to examples: text formats through the tokenizer (and chat template);
    /// pre-tokenized lines checked against the vocabulary.
    fn read_examples(&self, name: &str, text: &str) -> JsResult<Vec<Example>> {
        let model =
            self.model_ref().ok_or_else(|| usage("load a model first: the data is tokenized with its tokenizer"))?;
        let examples = match self.meta.as_ref().and_then(|m| m.tokenizer.as_ref()) {
            Some(tok) => {
                let (ex, report) = data::load_jsonl(tok, name, text, &DataOptions::default()).map_err(js_err)?;
                let _ = report;
                ex
            }
            None => data::parse_tokenized_jsonl(name, text).map_err(js_err)?,
        };
        let vocab = model.cfg.vocab;
        for e in &examples {
            if let Some(&bad) = e.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(js_err(Error::Data(format!(
                    "{}: token id {bad} is outside the model's vocabulary of {vocab}",
                    e.origin
                ))));
            }
        }
        Ok(examples)
    }

    /// Training and validation examples at the current settings: cut to `max_len`, the
    /// evaluation file (else a seeded share of the data) held out.
    fn split(&self) -> JsResult<(Vec<Example>, Vec<Example>)> {
        let mode = self.cfg.loss;
        let (data, _) = truncate(self.examples.clone(), self.ds.max_len, mode);
        let (train, mut valid) = if !self.eval.is_empty() {
            (data, truncate(self.eval.clone(), self.ds.max_len, mode).0)
        } else if self.ds.val_share > 0.0 && data.len() >= 2 {
            split_validation(data, self.ds.val_share, self.cfg.seed).map_err(js_err)?
        } else {
            (data, Vec::new())
        };
        if self.ds.val_limit > 0 {
            valid.truncate(self.ds.val_limit);
        }
        Ok((train, valid))
    }

    fn ensure_run(&mut self) -> JsResult<()> {
        if self.run.is_some() {
            return Ok(());
        }
        if self.examples.is_empty() {
            return Err(usage("load a dataset first"));
        }
        let (train, valid) = self.split()?;
        if train.is_empty() {
            return Err(usage(format!(
                "no training example keeps a trained token within {} tokens: raise the maximum length",
                self.ds.max_len
            )));
        }
        self.check_fits()?;
        let model = self.model.take().ok_or_else(|| usage("load a model first"))?;
        let trainer = match Trainer::new(self.gpu, model, TrainConfig::default()) {
            Ok(t) => t,
            Err(e) => return Err(js_err(e)),
        };
        match Run::new(trainer, self.cfg.clone(), train, valid) {
            Ok(run) => {
                self.run = Some(run.with_clock(now_ms));
                Ok(())
            }
            Err(e) => Err(js_err(e)),
        }
    }

    /// Refuse a configuration whose largest buffer the adapter cannot bind, naming the
    /// limit, before anything is allocated.
    fn check_fits(&self) -> JsResult<()> {
        let Some(m) = self.model_ref() else { return Ok(()) };
        let rows = self.cfg.micro() * self.ds.max_len.min(m.max_seq());
        // The largest single buffer of a step: the logits of every row (all-tokens).
        let logits = rows as u64 * m.cfg.vocab as u64 * 4;
        if logits > self.gpu.max_binding() {
            return Err(js_err(Error::Limit {
                what: format!(
                    "the logits of a micro-batch ({} sequences x {} tokens x {} vocabulary)",
                    self.cfg.micro(),
                    self.ds.max_len,
                    m.cfg.vocab
                ),
                need: logits,
                have: self.gpu.max_binding(),
                limit: "maxStorageBufferBindingSize",
            }));
        }
        Ok(())
    }

    fn memory_json(&self) -> Value {
        let (Some(m), Some(meta)) = (self.model_ref(), &self.meta) else { return Value::Null };
        let seq = self.ds.max_len.min(m.max_seq());
        match memory::estimate(&m.cfg, meta.lora.as_ref(), self.cfg.micro(), seq) {
            Ok(e) => json!({
                "frozen_weights": e.frozen_weights, "trainable_weights": e.trainable_weights,
                "grads_and_moments": e.grads_and_moments, "activations": e.activations,
                "tables": e.tables, "total": e.total(),
                "fits": self.check_fits().is_ok(),
                "max_binding_bytes": self.gpu.max_binding(),
            }),
            Err(e) => json!({"error": e.to_string()}),
        }
    }
}

/// The `base_model_name_or_path` of an exported adapter: a hub id when the model came
/// from the hub, else the file name the page gave.
fn base_model_id(name: &str) -> String {
    match name {
        n if n.to_lowercase().contains("smollm2-135m-instruct") => "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
        n => n.to_string(),
    }
}

/// `{rank, alpha, dropout, rslora, targets}` to a LoRA configuration (null: none).
fn lora_config(v: &JsValue, seed: u64) -> JsResult<Option<LoraConfig>> {
    if v.is_null() || v.is_undefined() || v.as_bool() == Some(false) {
        return Ok(None);
    }
    let rank = whole(v, "rank", 1.0)?.unwrap_or(8) as usize;
    let alpha = num(v, "alpha")?.unwrap_or(2.0 * rank as f64) as f32;
    let dropout = num(v, "dropout")?.unwrap_or(0.0) as f32;
    let targets: Vec<String> = match get(v, "targets") {
        None => vec![ALL_LINEAR.to_string()],
        Some(t) if Array::is_array(&t) => Array::from(&t).iter().filter_map(|x| x.as_string()).collect(),
        Some(t) => t.as_string().unwrap_or_default().split(',').map(|s| s.trim().to_string()).collect(),
    };
    let targets: Vec<String> = targets.into_iter().filter(|s| !s.is_empty()).collect();
    let l = LoraConfig { rank, alpha, dropout, rslora: flag(v, "rslora").unwrap_or(false), targets, seed };
    l.validate().map_err(js_err)?;
    Ok(Some(l))
}

fn report_json(r: &StepReport) -> JsValue {
    to_js(json!({
        "step": r.step, "total_steps": r.total_steps, "epoch": r.epoch, "loss": r.loss, "lr": r.lr,
        "grad_norm": r.grad_norm, "examples": r.examples, "tokens": r.tokens, "targets": r.targets,
        "ms": r.ms, "tokens_per_s": r.tokens_per_s, "valid_loss": r.valid_loss,
    }))
}

/// What this build can do, so the page enables its controls from the engine.
#[wasm_bindgen]
pub fn capabilities() -> JsValue {
    to_js(json!({
        "hf_safetensors": true, "gguf": true, "tokenizer": true, "lora": true,
        "generate": true, "export": ["peft", "merged", "gguf"], "checkpoint": true,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
