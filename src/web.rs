//! The wasm-bindgen facade: JS values in, [`crate::session::Session`] calls, JS values
//! out, and nothing else. Settings, reports and previews cross the boundary through
//! serde-wasm-bindgen; a wrong setting is an error that names its key. Every call returns
//! `Result<_, JsError>` with the engine's own message (file, line, field, limit) so the
//! page can show it as it is; nothing here panics on bad input (a panic hook still logs
//! to the console, should the engine ever panic).
//!
//! The life of a session: `configure` (settings), `load_model` (GGUF or a Hugging Face
//! folder), `set_data` (+ `set_eval`), then `step` until `plan().finished`, with
//! `validate`, `evaluate` and `generate` in between, and `export_*` / `save_state` /
//! `restore_state` at any step boundary.

use std::cell::RefCell;

use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use serde::Serialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::export::gguf::GgufDtype;
use crate::gpu::Gpu;
use crate::session::{Format, GenOptions, Method, Prompt, Session as Core, Settings};
use crate::tokenize::Message;

thread_local! {
    /// One device per worker while it lives: the session borrows it for `'static`. After
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

/// A report as a plain JS object (maps as objects, 64-bit integers as numbers).
fn to_js<T: Serialize>(v: &T) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap_or(JsValue::NULL)
}

/// A JS value as JSON (for settings patches), through serde-wasm-bindgen.
fn from_js(v: &JsValue, what: &str) -> JsResult<Value> {
    if v.is_null() || v.is_undefined() {
        return Ok(json!({}));
    }
    serde_wasm_bindgen::from_value(v.clone()).map_err(|e| usage(format!("{what}: {e}")))
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// `{name: Uint8Array}` for the page's downloads.
fn files_object(files: &[(String, Vec<u8>)]) -> JsValue {
    let o = Object::new();
    for (name, bytes) in files {
        let _ = Reflect::set(&o, &JsValue::from_str(name), &Uint8Array::from(bytes.as_slice()));
    }
    o.into()
}

/// The worker's handle on the engine. Create with `await Session.create()`.
#[wasm_bindgen]
pub struct Session {
    core: Core<'static>,
}

/// The settings' defaults (the page fills its form with them).
#[wasm_bindgen]
pub fn default_settings() -> JsValue {
    to_js(&Settings::default())
}

/// What this build can do, so the page enables its controls from the engine.
#[wasm_bindgen]
pub fn capabilities() -> JsValue {
    to_js(&json!({
        "export": ["peft", "merged", "gguf"],
        "test_hooks": cfg!(feature = "test-hooks"),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

#[wasm_bindgen]
impl Session {
    /// Request the GPU (once per worker, or again after the device was lost) and make an
    /// empty session with the default settings.
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
        Ok(Session { core: Core::new(gpu, Settings::default()).map_err(js_err)? })
    }

    /// The adapter: name, backend, type, whether it is a software rasterizer, the
    /// largest buffer one binding can see, and whether the device is lost.
    pub fn adapter_info(&self) -> JsValue {
        let g = self.core.gpu();
        let i = &g.info;
        to_js(&json!({
            "name": i.name, "backend": i.backend, "device_type": i.device_type, "software": i.software,
            "max_binding_bytes": g.max_binding(), "max_buffer_bytes": g.limits.max_buffer_size,
            "matmul": if g.matmul_cpu { "cpu" } else { "gpu" }, "lost": g.is_lost(),
        }))
    }

    /// Whether the GPU device was lost (the page then starts a new session and resumes
    /// from its last checkpoint).
    pub fn device_lost(&self) -> bool {
        self.core.gpu().is_lost()
    }

    /// Test hook (built with the `test-hooks` feature only): destroy the device, as a
    /// driver reset would, to test the page's recovery.
    pub fn simulate_device_loss(&self) -> JsResult<()> {
        if !cfg!(feature = "test-hooks") {
            return Err(usage("this build has no test hooks (build with --features test-hooks)"));
        }
        self.core.gpu().device.destroy();
        Ok(())
    }

    /// Load a model from its files, `{name: Uint8Array}`: one `.gguf`, or a Hugging Face
    /// folder (`config.json`, `model.safetensors` or the shards of
    /// `model.safetensors.index.json`, the tokenizer files). `lora`: null for full
    /// fine-tuning, else `{rank, alpha, dropout, rslora, targets: "all-linear" | [names]}`
    /// (the `lora_*` settings). Replaces the model and run before; the data is prepared
    /// again with the new tokenizer. Returns `model_info()`.
    pub fn load_model(&mut self, name: &str, files: &JsValue, lora: &JsValue) -> JsResult<JsValue> {
        if !files.is_object() {
            return Err(usage("load_model expects an object of file name -> Uint8Array"));
        }
        let mut patch = json!({});
        let l = from_js(lora, "lora")?;
        match l.as_object() {
            Some(o) if !o.is_empty() => {
                patch["method"] = json!("lora");
                for (k, key) in [("rank", "lora_rank"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout")] {
                    if let Some(x) = o.get(k) {
                        patch[key] = x.clone();
                    }
                }
                if let Some(x) = o.get("rslora") {
                    patch["rslora"] = x.clone();
                }
                if let Some(x) = o.get("base") {
                    patch["base"] = x.clone();
                }
                match o.get("targets") {
                    Some(Value::String(t)) => {
                        patch["lora_targets"] = json!(t.split(',').map(str::trim).collect::<Vec<_>>())
                    }
                    Some(t) => patch["lora_targets"] = t.clone(),
                    None => {}
                }
            }
            _ => patch["method"] = json!("full"),
        }
        let settings = self.core.settings().patched(&patch).map_err(js_err)?;
        self.core.configure(settings).map_err(js_err)?;
        let mut all: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in Object::entries(&Object::from(files.clone())).iter() {
            let pair = Array::from(&entry);
            let path = pair.get(0).as_string().unwrap_or_default();
            let v = pair.get(1);
            if !v.is_instance_of::<Uint8Array>() {
                return Err(usage(format!("{path}: expected the file's bytes (a Uint8Array)")));
            }
            all.push((path, Uint8Array::from(v).to_vec()));
        }
        self.core.load_files(name, &all).map_err(js_err)?;
        Ok(self.model_info())
    }

    /// What is loaded (`null` when nothing is): architecture, sizes, parameter counts,
    /// LoRA and the layers it can target, the tokenizer and chat template, and the GPU
    /// memory at the current settings.
    pub fn model_info(&self) -> JsValue {
        match self.core.model_info() {
            Ok(i) => {
                let mut v = Core::json(&i);
                v["memory"] = Core::json(&self.core.memory());
                to_js(&v)
            }
            Err(_) => JsValue::NULL,
        }
    }

    /// Set the training data from a JSONL text in any of the loader's formats. Errors
    /// name `name:line` and the field. Returns `data_info()`.
    pub fn set_data(&mut self, name: &str, text: &str) -> JsResult<JsValue> {
        self.core.set_data(name, text).map_err(js_err)?;
        Ok(self.data_info())
    }

    /// Set the held-out evaluation examples (the validation loss and exact match use
    /// them instead of a share of the training data). An empty text clears it.
    pub fn set_eval(&mut self, name: &str, text: &str) -> JsResult<JsValue> {
        self.core.set_eval(Some((name, text))).map_err(js_err)?;
        Ok(self.data_info())
    }

    /// The dataset as it will train: its format, counts, the split, truncation and any
    /// warning.
    pub fn data_info(&self) -> JsValue {
        let Some(d) = self.core.data() else { return JsValue::NULL };
        let s = d.summary();
        let split = self.core.split().ok();
        let mut v = Core::json(&s);
        v["truncated"] = json!(s.truncated_prompt + s.truncated_answer);
        v["train"] = json!(split.as_ref().map_or(0, |x| x.train.len()));
        v["val"] = json!(split.as_ref().map_or(0, |x| x.valid.len()));
        v["max_len"] = json!(self.core.max_len());
        let e = self.core.eval_data();
        v["eval_name"] = json!(e.map(|e| e.name.clone()).unwrap_or_default());
        v["eval"] = json!(e.map_or(0, |e| e.items.len()));
        let from = e.unwrap_or(d);
        v["samples"] = Core::json(&from.items.iter().filter_map(|i| i.sample.clone()).take(8).collect::<Vec<_>>());
        to_js(&v)
    }

    /// Example `index` of the dataset, token by token (the mask preview).
    pub fn preview(&self, index: usize) -> JsResult<JsValue> {
        Ok(to_js(&self.core.preview(index).map_err(js_err)?))
    }

    /// Replace the keys given in `settings` (an object of `Settings` keys; the others keep
    /// their values). A run in progress ends (the model keeps its weights) unless the
    /// run's settings are unchanged. Returns `plan()`.
    pub fn configure(&mut self, settings: &JsValue) -> JsResult<JsValue> {
        let patch = from_js(settings, "settings")?;
        let s = self.core.settings().patched(&patch).map_err(js_err)?;
        self.core.configure(s).map_err(js_err)?;
        Ok(self.plan())
    }

    /// The run as configured and where it stands: steps, the settings (also at the top
    /// level), the memory estimate and whether it fits, `problem` when it cannot start.
    pub fn plan(&self) -> JsValue {
        let p = self.core.plan();
        let mut v = Core::json(&p);
        if let Some(s) = v["settings"].as_object().cloned() {
            for (k, x) in s {
                v[k.as_str()] = x;
            }
        }
        v["grad_accum"] = json!(p.settings.batch.div_ceil(p.micro_batch.max(1)));
        v["max_len"] = json!(self.core.max_len());
        to_js(&v)
    }

    /// Optimizer steps applied so far in this run.
    pub fn step_count(&self) -> u64 {
        self.core.step_count()
    }

    /// One optimizer step of the run (started on first call, after the check that finds
    /// every conflict). Returns the step's report, or `null` when the run is complete.
    /// On an error nothing advances.
    pub async fn step(&mut self) -> JsResult<JsValue> {
        match self.core.step().await.map_err(js_err)? {
            Some(r) => Ok(to_js(&r)),
            None => Ok(JsValue::NULL),
        }
    }

    /// The validation loss (the held-out set, else the training set) in the loss mode.
    pub async fn validate(&mut self) -> JsResult<JsValue> {
        let t0 = now_ms();
        let v = self.core.validate().await.map_err(js_err)?;
        let mut j = Core::json(&v);
        j["ms"] = json!(now_ms() - t0);
        Ok(to_js(&j))
    }

    /// Exact match on up to `limit` held-out examples; items show the user's words.
    pub async fn evaluate(&mut self, limit: usize) -> JsResult<JsValue> {
        let t0 = now_ms();
        let r = self.core.exact_match(limit).await.map_err(js_err)?;
        let mut j = Core::json(&r);
        j["ms"] = json!(now_ms() - t0);
        Ok(to_js(&j))
    }

    /// Generate a reply and stream it: `input` is a prompt string, or chat messages
    /// `[{role, content}]` put through the chat template. `opts`: `{max_new_tokens,
    /// temperature, top_k, top_p, seed, chat}`. `on_text(piece)` receives the text as it
    /// decodes; returning `false` stops.
    pub async fn generate(&mut self, input: &JsValue, opts: &JsValue, on_text: &Function) -> JsResult<JsValue> {
        let opts: GenOptions = if opts.is_null() || opts.is_undefined() {
            GenOptions::default()
        } else {
            serde_path_to_error::deserialize(serde_wasm_bindgen::Deserializer::from(opts.clone()))
                .map_err(|e| usage(format!("generate option `{}`: {}", e.path(), e.inner())))?
        };
        let prompt = if Array::is_array(input) {
            let messages: Vec<Message> = serde_wasm_bindgen::from_value(input.clone())
                .map_err(|e| usage(format!("chat messages need a `role` and a `content`: {e}")))?;
            Prompt::Chat(messages)
        } else {
            Prompt::Text(input.as_string().ok_or_else(|| usage("generate expects a prompt string or chat messages"))?)
        };
        let t0 = now_ms();
        let g = self
            .core
            .generate(prompt, &opts, |piece| {
                on_text
                    .call1(&JsValue::NULL, &JsValue::from_str(piece))
                    .map(|r| r.as_bool() != Some(false))
                    .unwrap_or(true)
            })
            .await
            .map_err(js_err)?;
        let ms = now_ms() - t0;
        let mut j = Core::json(&g);
        j["ms"] = json!(ms);
        j["tokens_per_s"] = json!(g.tokens as f64 / (ms / 1e3).max(1e-9));
        Ok(to_js(&j))
    }

    /// The LoRA adapter as PEFT saves it: `{"adapter_config.json", "adapter_model.safetensors"}`.
    pub async fn export_peft(&self) -> JsResult<JsValue> {
        Ok(files_object(&self.core.export(Some(Format::Peft)).await.map_err(js_err)?))
    }

    /// The trained model with adapters merged, as a Hugging Face folder
    /// `{config.json, model.safetensors, tokenizer files}` (Hugging Face bases only).
    pub async fn export_merged(&self) -> JsResult<JsValue> {
        Ok(files_object(&self.core.export(Some(Format::Merged)).await.map_err(js_err)?))
    }

    /// The run as a transformers + TRL + PEFT + accelerate project, `{path: Uint8Array}`
    /// (train.py, data/, accelerate/, requirements.txt, README.md, and adapter/ under LoRA).
    pub async fn export_project(&self) -> JsResult<JsValue> {
        Ok(files_object(&self.core.export_project().await.map_err(js_err)?))
    }

    /// The trained model with adapters merged, as one GGUF file whose matrices are
    /// `gguf_type` (`f16`, `f32` or `q8_0`, as the `gguf_type` setting; missing: the
    /// setting's value).
    pub async fn export_gguf(&self, gguf_type: Option<String>) -> JsResult<Uint8Array> {
        let dtype = match gguf_type {
            Some(t) => t.parse::<GgufDtype>().map_err(js_err)?,
            None => self.core.settings().gguf_type,
        };
        let bytes = self.core.export_gguf(dtype).await.map_err(js_err)?;
        Ok(Uint8Array::from(bytes.as_slice()))
    }

    /// The training state (trainable weights, AdamW moments, step, data order, settings)
    /// as bytes; `restore_state` continues from it on the same model and data.
    pub async fn save_state(&mut self) -> JsResult<Uint8Array> {
        let bytes = self.core.save_state().await.map_err(js_err)?;
        Ok(Uint8Array::from(bytes.as_slice()))
    }

    /// Continue from a state saved by `save_state`: its settings replace the current ones
    /// (returned as `plan()`); anything that differs from the saved run is named.
    pub fn restore_state(&mut self, bytes: &[u8]) -> JsResult<JsValue> {
        self.core.restore_state(bytes).map_err(js_err)?;
        Ok(self.plan())
    }

    /// The method the model was loaded with ("lora" or "full").
    pub fn method(&self) -> String {
        self.core.model_info().map(|i| i.method).unwrap_or(Method::Full).to_string()
    }
}
