//! The one core behind both front-ends. The command line (`src/bin/webtune/cli.rs`) and
//! the page (`src/web.rs`) are translators into [`Settings`] and calls of [`Session`]:
//! loading a model, preparing data (formats, chat template, masks, truncation, the
//! validation split), the check that finds every conflict before the first step, the
//! training loop, evaluation, generation, export and the training state are all here, so
//! the same model, data and settings train the same way on both.

pub mod dataset;
mod evaluate;
mod export;
pub mod export_run;
pub mod model_files;
mod report;
pub mod settings;

use serde::Serialize;
use serde_json::{json, Value};

pub use dataset::{DataFile, DataSummary, Item, Split};
pub use model_files::ModelMeta;
pub use report::{
    ExactItem, ExactMatch, GenOptions, Generated, LoraInfo, MemoryInfo, ModelInfo, Plan, Preview, PreviewToken, Prompt,
    ValidLoss,
};
pub use settings::{Base, Format, GgufDtype, Method, Settings};

use crate::error::{Error, Result};
use crate::export::peft::{import_adapter, parse_adapter_config, AdapterFiles};
use crate::gpu::Gpu;
use crate::model::lora::LoraConfig;
use crate::model::memory::{self, MemoryEstimate};
use crate::model::{Model, WorkspaceOpts, HEAD_CHUNK};
use crate::tokenize::Tokenizer;
use crate::train::{Run, StepReport, TrainConfig, Trainer};

/// The session: one model, its data, the settings and the run.
pub struct Session<'g> {
    gpu: &'g Gpu,
    settings: Settings,
    meta: Option<ModelMeta>,
    /// The LoRA the model was built with (None: full fine-tuning).
    loaded_lora: Option<LoraConfig>,
    /// The model while no run holds it (then it is `run.trainer.model`).
    model: Option<Model>,
    run: Option<Run<'g>>,
    /// The data as text (re-read when a setting that shapes examples changes) and as
    /// prepared at the current settings.
    train_text: Option<(String, String)>,
    eval_text: Option<(String, String)>,
    train: Option<DataFile>,
    eval: Option<DataFile>,
}

impl<'g> Session<'g> {
    pub fn new(gpu: &'g Gpu, settings: Settings) -> Result<Session<'g>> {
        settings.check()?;
        Ok(Session {
            gpu,
            settings,
            meta: None,
            loaded_lora: None,
            model: None,
            run: None,
            train_text: None,
            eval_text: None,
            train: None,
            eval: None,
        })
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn meta(&self) -> Option<&ModelMeta> {
        self.meta.as_ref()
    }

    pub fn model(&self) -> Option<&Model> {
        self.run.as_ref().map(|r| &r.trainer.model).or(self.model.as_ref())
    }

    pub fn run(&self) -> Option<&Run<'g>> {
        self.run.as_ref()
    }

    pub fn run_mut(&mut self) -> Option<&mut Run<'g>> {
        self.run.as_mut()
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        let meta = self.meta.as_ref().ok_or_else(|| Error::Usage("load a model first".into()))?;
        meta.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Usage(format!("{} came without a tokenizer (tokenizer.json)", meta.name)))
    }

    /// Replace the settings. Data is prepared again when a setting that shapes the
    /// examples changed; a run in progress ends (the model keeps its weights) unless the
    /// run's settings are unchanged. Returns the plan (`reload_needed` when the LoRA part
    /// differs from the loaded model's).
    pub fn configure(&mut self, settings: Settings) -> Result<Plan> {
        settings.check()?;
        let old = std::mem::replace(&mut self.settings, settings);
        let s = &self.settings;
        let reshapes = old.max_len != s.max_len || old.last_turn_only != s.last_turn_only || old.loss != s.loss;
        if reshapes {
            if let Err(e) = self.reread() {
                self.settings = old;
                self.reread()?;
                return Err(e);
            }
        }
        let same_run = old.run_config().to_json() == self.settings.run_config().to_json()
            && old.val_share == self.settings.val_share
            && old.val_limit == self.settings.val_limit
            && old.pack == self.settings.pack
            && old.recompute == self.settings.recompute
            && !reshapes;
        if !same_run {
            self.drop_run();
        }
        Ok(self.plan())
    }

    /// Load a model from its files (see [`model_files::load`]) with the LoRA of the
    /// current settings. Replaces the model and run before; the data is prepared again
    /// with the new tokenizer.
    pub fn load_files(&mut self, name: &str, files: &[(String, Vec<u8>)]) -> Result<ModelInfo> {
        self.run = None;
        self.model = None;
        self.meta = None;
        self.train = None;
        self.eval = None;
        let gguf = files.iter().any(|(n, _)| n.to_lowercase().ends_with(".gguf"));
        if gguf {
            // Known from the file names: refuse before the (slow) load.
            self.check_format(name, false)?;
        }
        let lora = self.settings.lora();
        let (model, meta) = model_files::load(self.gpu, name, files, lora.as_ref(), self.settings.base)?;
        self.install(model, meta)
    }

    /// Use `model` (built with the current settings' LoRA) and what came with it.
    pub fn install(&mut self, model: Model, meta: ModelMeta) -> Result<ModelInfo> {
        self.run = None;
        self.loaded_lora = model.lora.clone();
        self.model = Some(model);
        self.meta = Some(meta);
        self.reread()?;
        self.model_info()
    }

    /// Continue a PEFT adapter: its rank, alpha, dropout and targets become the
    /// settings' (call before loading the model; then [`Session::import_adapter`]).
    pub fn adopt_adapter_config(&mut self, files: &AdapterFiles) -> Result<()> {
        let l = parse_adapter_config(&files.config_json)?;
        let s = Settings {
            method: Method::Lora,
            lora_rank: l.rank,
            lora_alpha: l.alpha,
            lora_dropout: l.dropout,
            rslora: l.rslora,
            lora_targets: l.targets,
            ..self.settings.clone()
        };
        s.check()?;
        self.settings = s;
        Ok(())
    }

    /// Put an adapter's weights into the loaded model (a missing or extra key is an
    /// error, never a silently fresh adapter).
    pub fn import_adapter(&mut self, files: &AdapterFiles) -> Result<()> {
        self.drop_run();
        let model = self.model.as_ref().ok_or_else(|| Error::Usage("load a model first".into()))?;
        import_adapter(self.gpu, model, files)
    }

    /// Set the training data (JSONL text in any format of [`crate::data`]).
    pub fn set_data(&mut self, name: &str, text: &str) -> Result<DataSummary> {
        let f = self.read(name, text)?;
        let summary = f.summary();
        self.train_text = Some((name.to_string(), text.to_string()));
        self.train = Some(f);
        self.drop_run();
        Ok(summary)
    }

    /// Set (or with None clear) the held-out evaluation file: the validation loss and
    /// exact match use it instead of a share of the training data.
    pub fn set_eval(&mut self, file: Option<(&str, &str)>) -> Result<Option<DataSummary>> {
        let out = match file {
            Some((name, text)) if !text.trim().is_empty() => {
                let f = self.read(name, text)?;
                let s = f.summary();
                self.eval_text = Some((name.to_string(), text.to_string()));
                self.eval = Some(f);
                Some(s)
            }
            _ => {
                self.eval_text = None;
                self.eval = None;
                None
            }
        };
        self.drop_run();
        Ok(out)
    }

    pub fn data(&self) -> Option<&DataFile> {
        self.train.as_ref()
    }

    pub fn eval_data(&self) -> Option<&DataFile> {
        self.eval.as_ref()
    }

    /// The maximum length in effect: the setting, capped by the model's positions.
    pub fn max_len(&self) -> usize {
        let cap = self.model().map(|m| m.max_seq()).unwrap_or(usize::MAX);
        self.settings.max_len.min(cap)
    }

    fn read(&self, name: &str, text: &str) -> Result<DataFile> {
        let model = self
            .model()
            .ok_or_else(|| Error::Usage("load a model first: the data is tokenized with its tokenizer".into()))?;
        let tok = self.meta.as_ref().and_then(|m| m.tokenizer.as_ref());
        dataset::read(tok, name, text, &self.settings, self.max_len(), model.cfg.vocab)
    }

    /// Prepare the data again (new settings or tokenizer).
    fn reread(&mut self) -> Result<()> {
        if self.model().is_none() {
            return Ok(());
        }
        if let Some((n, t)) = self.train_text.clone() {
            self.train = Some(self.read(&n, &t)?);
        }
        if let Some((n, t)) = self.eval_text.clone() {
            self.eval = Some(self.read(&n, &t)?);
        }
        Ok(())
    }

    /// The training and validation examples at the current settings.
    pub fn split(&self) -> Result<Split> {
        let train = self.train.as_ref().ok_or_else(|| Error::Usage("load a dataset first".into()))?;
        dataset::split(train, self.eval.as_ref(), &self.settings)
    }

    /// The workspace layout training uses.
    fn workspace_opts(&self) -> WorkspaceOpts {
        WorkspaceOpts { recompute: self.settings.recompute, all_logits: false, head_chunk: HEAD_CHUNK }
    }

    /// The memory of the current settings: micro-batches of the longest prepared example
    /// (or the maximum length when no data is loaded, or the pack width), every token
    /// carrying loss, and whether the largest buffer fits the adapter's binding limit.
    pub fn memory(&self) -> Option<MemoryInfo> {
        let m = self.model()?;
        let longest = self
            .train
            .iter()
            .chain(&self.eval)
            .flat_map(|f| f.items.iter().map(|i| i.example.ids.len()))
            .max()
            .unwrap_or(self.max_len());
        let seq = if self.settings.pack > 0 { self.settings.pack } else { longest }.max(1);
        let micro = self.settings.micro();
        let lora = self.loaded_lora.as_ref();
        let opts = self.workspace_opts();
        // The frozen matrices the loaded model keeps compact, in their formats.
        let compact_of =
            |s: &crate::model::ParamSpec| m.params.id(&s.name).ok().and_then(|p| m.params.compact(p)).map(|c| c.format);
        let (e, error) = match memory::estimate_compact(&m.cfg, lora, micro, seq, opts, compact_of) {
            Ok(e) => {
                let rows = micro * seq;
                let head = crate::model::head_rows(opts.head_chunk, m.cfg.vocab);
                let biggest = memory::largest_buffer(&m.cfg, rows, rows.min(head));
                let err = self
                    .gpu
                    .check_fits(&format!("activations of a micro-batch of {micro} x {seq} tokens"), biggest)
                    .err()
                    .map(|e| e.to_string());
                (e, err)
            }
            Err(e) => (MemoryEstimate::default(), Some(e.to_string())),
        };
        Some(MemoryInfo {
            estimate: e,
            total: e.total(),
            micro_batch: micro,
            seq,
            max_binding_bytes: self.gpu.max_binding(),
            fits: error.is_none(),
            error,
        })
    }

    /// Every conflict between the settings, the model and the data, found before the
    /// first step: the first one, as an error that says what to change.
    pub fn check(&self) -> Result<()> {
        let s = &self.settings;
        s.check()?;
        let meta = self.meta.as_ref().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let model = self.model().ok_or_else(|| Error::Usage("load a model first".into()))?;
        if self.lora_differs(model) {
            return Err(Error::Setting {
                field: "method".into(),
                message: "the model was loaded with other LoRA settings (method, rank, alpha, dropout or targets): load it again to apply them".into(),
            });
        }
        self.check_format(&meta.name, meta.config_json.is_some())?;
        let split = self.split()?;
        if split.train.is_empty() {
            return Err(Error::Data("the training set is empty".into()));
        }
        if s.pack > 0 {
            if let Some(long) = split.train.iter().chain(&split.valid).find(|i| i.example.ids.len() > s.pack) {
                return Err(Error::Setting {
                    field: "pack".into(),
                    message: format!(
                        "{} has {} tokens, more than a packed row of {}: raise pack to at least max_len ({})",
                        long.example.origin,
                        long.example.ids.len(),
                        s.pack,
                        self.max_len()
                    ),
                });
            }
        }
        if let Some(mem) = self.memory() {
            if let Some(e) = mem.error {
                return Err(Error::Usage(e));
            }
        }
        Ok(())
    }

    /// Whether the output format suits the base (`hf`: a Hugging Face config is there).
    fn check_format(&self, name: &str, hf: bool) -> Result<()> {
        match self.settings.format(hf) {
            Format::Merged if !hf => Err(Error::Setting {
                field: "format".into(),
                message: format!(
                    "merged writes a Hugging Face folder and needs a Hugging Face base (folder or hub id); {name} is a GGUF file: use format gguf (or peft with LoRA)"
                ),
            }),
            Format::Peft if self.settings.method != Method::Lora => {
                Err(Error::Setting { field: "format".into(), message: "a PEFT adapter needs method lora".into() })
            }
            _ => Ok(()),
        }
    }

    /// Whether the settings' LoRA (method, rank, alpha, dropout, rsLoRA, targets) differs
    /// from the one `model` was built with.
    fn lora_differs(&self, model: &Model) -> bool {
        let arch = model.cfg.arch;
        let norm = |l: &LoraConfig| LoraConfig { seed: 0, ..l.expanded(arch) };
        self.settings.lora().as_ref().map(norm) != self.loaded_lora.as_ref().map(norm)
    }

    /// The run as configured and where it stands.
    pub fn plan(&self) -> Plan {
        let s = &self.settings;
        let split = self.split().ok();
        let n_train = split.as_ref().map(|x| x.train.len()).unwrap_or(0);
        let per_epoch = n_train.div_ceil(s.batch.max(1)).max(1);
        let total =
            self.run.as_ref().map(|r| r.total_steps()).unwrap_or_else(|| s.run_config().total_steps(n_train.max(1)));
        let reload_needed = self.model().is_some_and(|m| self.lora_differs(m));
        Plan {
            total_steps: total,
            steps_per_epoch: per_epoch,
            epochs: total as f64 / per_epoch as f64,
            train_examples: n_train,
            valid_examples: split.as_ref().map(|x| x.valid.len()).unwrap_or(0),
            micro_batch: s.micro(),
            done: self.step_count(),
            finished: self.run.as_ref().is_some_and(|r| r.is_done()),
            reload_needed,
            settings: s.clone(),
            memory: self.memory(),
            problem: if self.run.is_some() { None } else { self.check().err().map(|e| e.to_string()) },
        }
    }

    pub fn model_info(&self) -> Result<ModelInfo> {
        let (Some(m), Some(meta)) = (self.model(), &self.meta) else {
            return Err(Error::Usage("load a model first".into()));
        };
        let c = &m.cfg;
        Ok(ModelInfo {
            name: meta.name.clone(),
            arch: format!("{:?}", c.arch),
            source: meta.source(),
            vocab: c.vocab,
            hidden: c.hidden,
            layers: c.layers,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            ffn: c.ffn,
            max_seq: m.max_seq(),
            tied_embeddings: c.tied,
            base_precision: m.params.precision_summary(),
            weight_bytes: m.params.gpu_bytes(),
            params: m.params.num_params(),
            trainable: m.params.num_trainable(),
            method: if m.lora.is_some() { Method::Lora } else { Method::Full },
            lora: m.lora.as_ref().map(|l| LoraInfo {
                rank: l.rank,
                alpha: l.alpha,
                dropout: l.dropout,
                rslora: l.rslora,
                targets: l.targets.clone(),
            }),
            lora_targets: LoraConfig::all_linear(c.arch).iter().map(|t| t.to_string()).collect(),
            tokenizer: meta.tokenizer.is_some(),
            chat_template: meta.tokenizer.as_ref().is_some_and(|t| t.chat_template().is_some()),
            eos_token_ids: c.eos_token_ids.clone(),
        })
    }

    /// Example `index` of the training file, token by token, under the current loss mode.
    pub fn preview(&self, index: usize) -> Result<Preview> {
        let f = self.train.as_ref().ok_or_else(|| Error::Usage("load a dataset first".into()))?;
        let item = f.items.get(index).ok_or_else(|| Error::Usage(format!("there is no example {}", index + 1)))?;
        let e = &item.example;
        let all = self.settings.loss == crate::train::LossMode::AllTokens;
        let tok = self.meta.as_ref().and_then(|m| m.tokenizer.as_ref());
        let tokens = e
            .ids
            .iter()
            .zip(&e.trained)
            .enumerate()
            .map(|(i, (&id, &t))| PreviewToken {
                id,
                text: tok.map(|t| t.token_text(id)),
                trained: i > 0 && (t || all),
            })
            .collect();
        Ok(Preview { origin: e.origin.clone(), index, count: f.items.len(), prompt: item.prompt.clone(), tokens })
    }

    /// Optimizer steps applied so far in this run.
    pub fn step_count(&self) -> u64 {
        self.run.as_ref().map(|r| r.step()).unwrap_or(0)
    }

    /// End the run, keeping the model with its current weights.
    pub fn drop_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.model = Some(run.into_trainer().into_model());
        }
    }

    /// The model, out of the session (the run ended first).
    pub fn take_model(&mut self) -> Option<Model> {
        self.drop_run();
        self.model.take()
    }

    pub fn into_model(mut self) -> Option<Model> {
        self.take_model()
    }

    /// Start the run from the current model, data and settings, after [`Session::check`].
    pub fn start(&mut self) -> Result<&mut Run<'g>> {
        if self.run.is_none() {
            self.check()?;
            let split = self.split()?;
            let model = self.model.take().ok_or_else(|| Error::Usage("load a model first".into()))?;
            let s = &self.settings;
            let tc = TrainConfig { pack: s.pack, recompute: s.recompute, ..Default::default() };
            let trainer = Trainer::new(self.gpu, model, tc)?;
            let run = Run::new(trainer, s.run_config(), split.train_examples(), split.valid_examples())?;
            self.run = Some(run.with_meta("settings", s.to_json()));
        }
        Ok(self.run.as_mut().unwrap())
    }

    /// One optimizer step (starting the run on the first call); None once it is done.
    /// On an error nothing advances.
    pub async fn step(&mut self) -> Result<Option<StepReport>> {
        self.start()?.next_step().await
    }

    /// The JSON of anything serializable (the reports above), for front-ends.
    pub fn json<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap_or_else(|e| json!({"error": e.to_string()}))
    }
}
