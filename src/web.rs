//! The wasm-bindgen facade, and nothing else: what `www/worker.js` calls. One `Session`
//! per worker owns the GPU device, the model under training, the dataset and the run's
//! settings. Every call returns `Result<_, JsError>` with the engine's own message (file,
//! line, tensor, limit), so the page can show it as it is; nothing here panics on bad
//! input (a panic hook still logs to the console, should the engine ever panic).
//!
//! Hooks for the pieces landing on other branches are marked `HOOK(...)`:
//! `HOOK(gguf)` loading .gguf bytes, `HOOK(tokenizer)` text JSONL and chat templates,
//! `HOOK(run)` the learning-rate schedule and checkpoints of `train::run`,
//! `HOOK(lora)` LoRA, `HOOK(generate)` sampling, `HOOK(export)` downloads.

use std::cell::RefCell;

use js_sys::{Object, Reflect, Uint8Array};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::gpu::Gpu;
use crate::model::{Model, Workspace};
use crate::rng::Rng;
use crate::train::{AdamW, Example, LossMode, TrainConfig, Trainer};

thread_local! {
    /// One device per worker, for the worker's lifetime: the trainer borrows it, and a
    /// second `Session` reuses it instead of leaking another.
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

/// The learning rate at optimizer step `t` (1-based) of `total`: linear warm-up, then
/// constant, linear or cosine decay to zero.
/// HOOK(run): replace with `train::run`'s schedule when it lands, so the page and the
/// command line share one definition.
fn lr_at(s: &Settings, t: u64) -> f64 {
    let (t, total, warm) = (t as f64, s.total_steps.max(1) as f64, s.warmup as f64);
    if warm > 0.0 && t <= warm {
        return s.lr * t / warm;
    }
    let p = ((t - warm) / (total - warm).max(1.0)).clamp(0.0, 1.0);
    match s.schedule.as_str() {
        "linear" => s.lr * (1.0 - p),
        "cosine" => s.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        _ => s.lr,
    }
}

/// The run's settings, as the page sends them (`configure`).
#[derive(Clone, Debug)]
struct Settings {
    loss: LossMode,
    lr: f64,
    schedule: String,
    warmup: u64,
    /// Examples per optimizer step, and per GPU pass (gradient accumulation = batch / micro).
    batch: usize,
    micro_batch: usize,
    /// Optimizer steps of the run; from `epochs` when given.
    total_steps: u64,
    epochs: Option<f64>,
    max_len: usize,
    max_grad_norm: f32,
    weight_decay: f32,
    seed: u64,
    val_share: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            loss: LossMode::PerExample,
            lr: 1e-4,
            schedule: "constant".into(),
            warmup: 0,
            batch: 8,
            micro_batch: 8,
            total_steps: 100,
            epochs: None,
            max_len: 512,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 0,
            val_share: 0.0,
        }
    }
}

/// The worker's handle on the engine. Create with `await Session.create()`.
#[wasm_bindgen]
pub struct Session {
    gpu: &'static Gpu,
    trainer: Option<Trainer<'static>>,
    model_name: String,
    /// Every example of the dataset, then the split.
    all: Vec<Example>,
    train: Vec<Example>,
    val: Vec<Example>,
    data_name: String,
    settings: Settings,
    /// Shuffled order of `train` for the current epoch, and the next position in it.
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
    rng: Rng,
}

fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(obj, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn num(obj: &JsValue, key: &str) -> std::result::Result<Option<f64>, JsError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => match v.as_f64().or_else(|| v.as_string().and_then(|s| s.trim().parse().ok())) {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(usage(format!("setting `{key}` must be a number"))),
        },
    }
}

fn count(obj: &JsValue, key: &str, min: f64) -> std::result::Result<Option<usize>, JsError> {
    match num(obj, key)? {
        Some(x) if x.fract() != 0.0 || x < min => {
            Err(usage(format!("setting `{key}` must be a whole number of at least {min}, got {x}")))
        }
        other => Ok(other.map(|x| x as usize)),
    }
}

#[wasm_bindgen]
impl Session {
    /// Request the GPU (once per worker) and make an empty session.
    pub async fn create() -> std::result::Result<Session, JsError> {
        install_panic_hook();
        let existing = GPU.with(|g| *g.borrow());
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
            trainer: None,
            model_name: String::new(),
            all: Vec::new(),
            train: Vec::new(),
            val: Vec::new(),
            data_name: String::new(),
            settings: Settings::default(),
            order: Vec::new(),
            cursor: 0,
            epoch: 0,
            rng: Rng::new(0),
        })
    }

    /// The adapter: name, backend, type, whether it is a software rasterizer, and the
    /// largest buffer one binding can see.
    pub fn adapter_info(&self) -> JsValue {
        let i = &self.gpu.info;
        to_js(json!({
            "name": i.name, "backend": i.backend, "device_type": i.device_type, "software": i.software,
            "max_binding_bytes": self.gpu.max_binding(),
            "max_buffer_bytes": self.gpu.limits.max_buffer_size,
            "matmul": if self.gpu.matmul_reg { "register-blocked" } else { "tiled" },
        }))
    }

    /// Load a Hugging Face folder handed over as `{ name: Uint8Array }`: `config.json` and
    /// one or more `*.safetensors` (shards; an index file is not needed). Folder prefixes
    /// in names are ignored. Replaces any model loaded before and restarts training.
    pub fn load_hf(&mut self, name: &str, files: &JsValue) -> std::result::Result<JsValue, JsError> {
        if !files.is_object() {
            return Err(usage("load_hf expects an object of file name -> Uint8Array"));
        }
        let mut config = None;
        let mut shards: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in Object::entries(&Object::from(files.clone())).iter() {
            let pair = js_sys::Array::from(&entry);
            let path = pair.get(0).as_string().unwrap_or_default();
            let base = path.rsplit(['/', '\\']).next().unwrap_or(&path).to_string();
            let bytes = pair.get(1);
            if !bytes.is_instance_of::<Uint8Array>() {
                return Err(usage(format!("{path}: expected the file's bytes (a Uint8Array)")));
            }
            let bytes = Uint8Array::from(bytes).to_vec();
            if base == "config.json" {
                config = Some(
                    String::from_utf8(bytes).map_err(|_| js_err(Error::Config(format!("{path} is not UTF-8 text"))))?,
                );
            } else if base.ends_with(".safetensors") {
                shards.push((base, bytes));
            }
        }
        let config = config.ok_or_else(|| usage("the model files need a config.json (a Hugging Face model folder)"))?;
        if shards.is_empty() {
            return Err(usage("the model files need at least one .safetensors file next to config.json"));
        }
        shards.sort_by(|a, b| a.0.cmp(&b.0));
        self.trainer = None;
        let refs: Vec<(&str, &[u8])> = shards.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        let model = crate::load::model_from_hf_bytes(self.gpu, &config, &refs).map_err(js_err)?;
        drop(refs);
        drop(shards);
        self.install(name, model)
    }

    /// Load a `.gguf` file (quantized weights are dequantized to f32 on load).
    pub fn load_gguf(&mut self, name: &str, bytes: &[u8]) -> std::result::Result<JsValue, JsError> {
        // HOOK(gguf): when `load::gguf` lands this becomes
        //     let model = crate::load::gguf::model_from_gguf_bytes(self.gpu, bytes).map_err(js_err)?;
        //     self.trainer = None;
        //     self.install(name, model)
        // (and the tokenizer in its metadata goes to HOOK(tokenizer)).
        let _ = bytes;
        Err(usage(format!(
            "{name}: GGUF loading is not in this build yet (it lands with the GGUF loader); \
             use a Hugging Face folder (config.json + .safetensors) or the engine demo model"
        )))
    }

    fn install(&mut self, name: &str, model: Model) -> std::result::Result<JsValue, JsError> {
        let trainer = Trainer::new(self.gpu, model, self.train_config()).map_err(js_err)?;
        self.trainer = Some(trainer);
        self.model_name = name.to_string();
        self.restart();
        Ok(self.model_info())
    }

    /// What is loaded: architecture, sizes, parameter counts, and the GPU memory the
    /// weights, gradients and AdamW moments take plus one micro-batch's activations at the
    /// current settings (`null` when no model is loaded).
    pub fn model_info(&self) -> JsValue {
        let Some(t) = &self.trainer else { return JsValue::NULL };
        let c = &t.model.cfg;
        let p = &t.model.params;
        let s = &self.settings;
        let len = s.max_len.min(t.model.max_seq());
        let rows = s.micro_batch.max(1) * len;
        let params_bytes = p.gpu_bytes();
        let act_bytes = Workspace::bytes_for(c, rows, rows);
        to_js(json!({
            "name": self.model_name,
            "arch": format!("{:?}", c.arch),
            "vocab": c.vocab, "hidden": c.hidden, "layers": c.layers, "heads": c.heads,
            "kv_heads": c.kv_heads, "head_dim": c.head_dim, "ffn": c.ffn, "max_seq": t.model.max_seq(),
            "tied_embeddings": c.tied,
            "params": p.num_params(), "trainable": p.num_trainable(),
            "param_bytes": params_bytes, "activation_bytes": act_bytes,
            "gpu_bytes": params_bytes + act_bytes,
            "eos_token_ids": c.eos_token_ids,
        }))
    }

    /// Set the dataset from tokenized JSONL text: `{"input_ids": [...], "prompt_len": k}` or
    /// `{"input_ids": [...], "trained": [0/1, ...]}` per line. Errors name `name:line`.
    /// HOOK(tokenizer): text formats (`prompt`/`completion`, `messages`, `text`) go through
    /// `tokenize` + `data` here once they land, producing the same `Example`s.
    pub fn set_data_tokenized(&mut self, name: &str, text: &str) -> std::result::Result<JsValue, JsError> {
        let examples = crate::data::parse_tokenized_jsonl(name, text).map_err(js_err)?;
        if let Some(t) = &self.trainer {
            let vocab = t.model.cfg.vocab;
            for e in &examples {
                if let Some(&bad) = e.ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(js_err(Error::Data(format!(
                        "{}: token id {bad} is outside the model's vocabulary of {vocab}",
                        e.origin
                    ))));
                }
            }
        }
        self.all = examples;
        self.data_name = name.to_string();
        self.split();
        self.restart();
        Ok(self.data_info())
    }

    /// Counts of the dataset: examples, train/validation split, tokens, trained tokens.
    pub fn data_info(&self) -> JsValue {
        let toks = |v: &[Example]| v.iter().map(|e| e.ids.len()).sum::<usize>();
        let trained = |v: &[Example]| v.iter().map(|e| e.trained.iter().skip(1).filter(|&&t| t).count()).sum::<usize>();
        let longest = self.all.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        to_js(json!({
            "name": self.data_name, "examples": self.all.len(), "train": self.train.len(), "val": self.val.len(),
            "tokens": toks(&self.all), "trained_tokens": trained(&self.all), "longest": longest,
            "truncated": self.all.iter().filter(|e| e.ids.len() > self.settings.max_len).count(),
        }))
    }

    /// The first `n` examples with each token's id and whether it carries loss under the
    /// current loss mode (for the mask preview).
    /// HOOK(tokenizer): add each token's text once a tokenizer is loaded.
    pub fn preview(&self, n: usize) -> JsValue {
        let all_tokens = self.settings.loss == LossMode::AllTokens;
        let items: Vec<Value> = self
            .all
            .iter()
            .take(n)
            .map(|e| {
                let trained: Vec<bool> =
                    e.trained.iter().enumerate().map(|(i, &t)| i > 0 && (t || all_tokens)).collect();
                json!({ "origin": e.origin, "ids": e.ids, "trained": trained })
            })
            .collect();
        to_js(Value::Array(items))
    }

    /// Set the run's settings from a plain object; missing keys keep their value. Keys:
    /// loss ("per-example" | "per-token" | "all-tokens"), lr, schedule ("constant" |
    /// "linear" | "cosine"), warmup, batch, micro_batch, steps, epochs, max_len,
    /// max_grad_norm (0 = off), weight_decay, seed, val_share (0..0.5). Returns the plan.
    pub fn configure(&mut self, opts: &JsValue) -> std::result::Result<JsValue, JsError> {
        let mut s = self.settings.clone();
        if let Some(v) = get(opts, "loss") {
            let name = v.as_string().unwrap_or_default();
            s.loss = name.parse().map_err(js_err)?;
        }
        if let Some(v) = get(opts, "schedule") {
            let name = v.as_string().unwrap_or_default();
            if !["constant", "linear", "cosine"].contains(&name.as_str()) {
                return Err(usage(format!("unknown schedule `{name}` (constant, linear or cosine)")));
            }
            s.schedule = name;
        }
        if let Some(x) = num(opts, "lr")? {
            if !(x > 0.0 && x < 1.0) {
                return Err(usage(format!("learning rate must be between 0 and 1, got {x}")));
            }
            s.lr = x;
        }
        if let Some(x) = count(opts, "warmup", 0.0)? {
            s.warmup = x as u64;
        }
        if let Some(x) = count(opts, "batch", 1.0)? {
            s.batch = x;
        }
        if let Some(x) = count(opts, "micro_batch", 1.0)? {
            s.micro_batch = x;
        }
        if let Some(x) = count(opts, "steps", 1.0)? {
            s.total_steps = x as u64;
            s.epochs = None;
        }
        if let Some(x) = num(opts, "epochs")? {
            if x <= 0.0 {
                return Err(usage(format!("epochs must be positive, got {x}")));
            }
            s.epochs = Some(x);
        }
        if let Some(x) = count(opts, "max_len", 2.0)? {
            s.max_len = x;
        }
        if let Some(x) = num(opts, "max_grad_norm")? {
            if x < 0.0 {
                return Err(usage("gradient clipping norm must be 0 (off) or positive"));
            }
            s.max_grad_norm = if x == 0.0 { f32::INFINITY } else { x as f32 };
        }
        if let Some(x) = num(opts, "weight_decay")? {
            if !(0.0..1.0).contains(&x) {
                return Err(usage(format!("weight decay must be in [0, 1), got {x}")));
            }
            s.weight_decay = x as f32;
        }
        if let Some(x) = count(opts, "seed", 0.0)? {
            s.seed = x as u64;
        }
        if let Some(x) = num(opts, "val_share")? {
            if !(0.0..=0.5).contains(&x) {
                return Err(usage(format!("validation share must be between 0 and 0.5, got {x}")));
            }
            s.val_share = x;
        }
        if s.micro_batch > s.batch {
            s.micro_batch = s.batch;
        }
        let resplit = s.seed != self.settings.seed || s.val_share != self.settings.val_share;
        self.settings = s;
        if resplit {
            self.split();
            self.restart();
        }
        self.update_total();
        let cfg = self.train_config();
        if let Some(t) = &mut self.trainer {
            t.cfg = cfg;
        }
        Ok(self.plan())
    }

    /// The run as configured: total steps, examples per step, accumulation, epochs.
    pub fn plan(&self) -> JsValue {
        let s = &self.settings;
        let per_epoch = self.train.len().div_ceil(s.batch.max(1)).max(1);
        to_js(json!({
            "total_steps": s.total_steps, "steps_per_epoch": per_epoch,
            "epochs": s.total_steps as f64 / per_epoch as f64,
            "batch": s.batch, "micro_batch": s.micro_batch, "accumulation": s.batch.div_ceil(s.micro_batch.max(1)),
            "loss": s.loss.to_string(), "lr": s.lr, "schedule": s.schedule, "warmup": s.warmup,
            "max_len": s.max_len, "done": self.step_count(),
        }))
    }

    /// Optimizer steps applied so far.
    pub fn step_count(&self) -> u64 {
        self.trainer.as_ref().map(|t| t.step).unwrap_or(0)
    }

    /// One optimizer step on the next `batch` examples. Returns
    /// `{step, total_steps, epoch, loss, grad_norm, lr, tokens, targets, ms}`; `loss` is
    /// the batch's loss before the update.
    pub async fn step(&mut self) -> std::result::Result<JsValue, JsError> {
        if self.trainer.is_none() {
            return Err(usage("load a model first"));
        }
        if self.train.is_empty() {
            return Err(usage("load a dataset first (no training examples)"));
        }
        let batch = self.next_batch();
        let t0 = now_ms();
        let Some(trainer) = self.trainer.as_mut() else { return Err(usage("load a model first")) };
        let lr = lr_at(&self.settings, trainer.step + 1);
        trainer.cfg.adamw.lr = lr as f32;
        let st = trainer.step(&batch).await.map_err(js_err)?;
        let ms = now_ms() - t0;
        Ok(to_js(json!({
            "step": trainer.step, "total_steps": self.settings.total_steps, "epoch": self.epoch,
            "loss": st.loss, "grad_norm": st.grad_norm, "lr": lr,
            "tokens": st.tokens, "targets": st.targets, "ms": ms,
        })))
    }

    /// The loss over the validation examples (or the training set when there is no
    /// validation split), in the configured loss mode, without changing anything.
    /// Returns `{loss, examples, split, ms}`.
    pub async fn score(&mut self) -> std::result::Result<JsValue, JsError> {
        let (set, split) = if self.val.is_empty() { (&self.train, "train") } else { (&self.val, "validation") };
        if set.is_empty() {
            return Err(usage("load a dataset first"));
        }
        let set: Vec<Example> = set.iter().map(|e| truncate(e, self.settings.max_len)).collect();
        let mode = self.settings.loss;
        let t0 = now_ms();
        let trainer = self.trainer.as_mut().ok_or_else(|| usage("load a model first"))?;
        let (_, loss) = trainer.score(&set, mode).await.map_err(js_err)?;
        Ok(to_js(json!({ "loss": loss, "examples": set.len(), "split": split, "ms": now_ms() - t0 })))
    }

    /// LoRA is not in the engine yet. HOOK(lora): `{rank, alpha, targets}` configures the
    /// adapter; `model_info().trainable` then reports the adapter's parameters.
    pub fn set_lora(&mut self, _opts: &JsValue) -> std::result::Result<(), JsError> {
        Err(usage("LoRA is coming: this build trains all parameters (full fine-tuning)"))
    }
}

/// Private helpers (not exported).
impl Session {
    fn train_config(&self) -> TrainConfig {
        let s = &self.settings;
        TrainConfig {
            loss: s.loss,
            micro_batch: s.micro_batch.max(1),
            adamw: AdamW {
                lr: s.lr as f32,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: s.weight_decay,
                max_grad_norm: s.max_grad_norm,
            },
            pack: 0,
        }
    }

    /// Split `all` into train and validation by a seeded shuffle.
    fn split(&mut self) {
        let mut idx: Vec<usize> = (0..self.all.len()).collect();
        shuffle(&mut idx, &mut Rng::new(self.settings.seed ^ 0x5eed_5917));
        let n_val = if self.all.len() >= 2 {
            ((self.all.len() as f64 * self.settings.val_share).round() as usize).min(self.all.len() - 1)
        } else {
            0
        };
        let (val, train) = idx.split_at(n_val);
        let mut train = train.to_vec();
        let mut val = val.to_vec();
        train.sort_unstable();
        val.sort_unstable();
        self.train = train.iter().map(|&i| self.all[i].clone()).collect();
        self.val = val.iter().map(|&i| self.all[i].clone()).collect();
        self.update_total();
    }

    fn update_total(&mut self) {
        if let Some(e) = self.settings.epochs {
            let per_epoch = self.train.len().div_ceil(self.settings.batch.max(1)).max(1);
            self.settings.total_steps = ((e * per_epoch as f64).ceil() as u64).max(1);
        }
    }

    /// Back to the start of the data order (a new model or dataset).
    fn restart(&mut self) {
        self.rng = Rng::new(self.settings.seed);
        self.order.clear();
        self.cursor = 0;
        self.epoch = 0;
    }

    /// The next `batch` training examples of the shuffled epoch order (wrapping into a new
    /// epoch), truncated to `max_len` tokens.
    fn next_batch(&mut self) -> Vec<Example> {
        let want = self.settings.batch.max(1).min(self.train.len());
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            if self.cursor >= self.order.len() {
                self.order = (0..self.train.len()).collect();
                shuffle(&mut self.order, &mut self.rng);
                self.cursor = 0;
                self.epoch += 1;
            }
            out.push(truncate(&self.train[self.order[self.cursor]], self.settings.max_len));
            self.cursor += 1;
        }
        out
    }
}

fn truncate(e: &Example, max_len: usize) -> Example {
    if e.ids.len() <= max_len {
        return e.clone();
    }
    Example { ids: e.ids[..max_len].to_vec(), trained: e.trained[..max_len].to_vec(), origin: e.origin.clone() }
}

/// Fisher-Yates with the engine's RNG (the same order natively and in wasm).
fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// What this build can do, so the page enables its controls from the engine rather than
/// guessing. Each flag flips when its piece lands (see the `HOOK(...)` notes above).
#[wasm_bindgen]
pub fn capabilities() -> JsValue {
    to_js(json!({
        "hf_safetensors": true,
        "tokenized_jsonl": true,
        "gguf": false,      // HOOK(gguf)
        "tokenizer": false, // HOOK(tokenizer): text JSONL, chat templates, token text in previews
        "lora": false,      // HOOK(lora)
        "generate": false,  // HOOK(generate): the chat box
        "export": false,    // HOOK(export): PEFT adapter, merged safetensors, GGUF downloads
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
