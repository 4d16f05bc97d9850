//! The trained model out (PEFT adapter, merged Hugging Face folder, GGUF) and the
//! training state out and back in.

use super::export_run::{export_run, ExportInput, ExportModel};
use super::{Format, Plan, Session, Settings};
use crate::error::{Error, Result};
use crate::export::gguf::{export_gguf, GgufDtype, GgufExport};
use crate::export::merged::export_merged;
use crate::export::peft::export_adapter;
use crate::train::checkpoint::Checkpoint;

impl<'g> Session<'g> {
    /// The `base_model_name_or_path` of an exported adapter: the hub id when one is
    /// known, else the name the model was loaded under.
    pub fn base_model_id(&self) -> String {
        let name = self.meta.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        super::export_run::known_hub_id(name).map(str::to_string).unwrap_or_else(|| name.to_string())
    }

    /// The trained model in `format` (None: the settings' format), as named files.
    pub async fn export(&self, format: Option<Format>) -> Result<Vec<(String, Vec<u8>)>> {
        let meta = self.meta.as_ref().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let model = self.model().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let format = match format {
            Some(Format::Auto) | None => self.settings.format(meta.config_json.is_some()),
            Some(f) => f,
        };
        match format {
            Format::Peft | Format::Auto => {
                if model.lora.is_none() {
                    return Err(Error::Setting {
                        field: "format".into(),
                        message: "a PEFT adapter needs LoRA training; this model trains all its weights (export merged or gguf)".into(),
                    });
                }
                let f = export_adapter(self.gpu, model, &self.base_model_id()).await?;
                Ok(vec![
                    ("adapter_config.json".into(), f.config_json.into_bytes()),
                    ("adapter_model.safetensors".into(), f.safetensors),
                ])
            }
            Format::Merged => {
                let config = meta.config_json.as_deref().ok_or_else(|| Error::Setting {
                    field: "format".into(),
                    message: "merged writes a Hugging Face folder and needs a Hugging Face base; this model came from a GGUF: export gguf".into(),
                })?;
                let f = export_merged(self.gpu, model, config).await?;
                let mut files = vec![
                    ("config.json".to_string(), f.config_json.into_bytes()),
                    ("model.safetensors".into(), f.safetensors),
                ];
                files.extend(meta.tokenizer_files.iter().cloned());
                Ok(files)
            }
            Format::Gguf => Ok(vec![("model.gguf".into(), self.export_gguf(self.settings.gguf_type).await?)]),
        }
    }

    /// The trained model with adapters merged, as one GGUF file.
    pub async fn export_gguf(&self, dtype: GgufDtype) -> Result<Vec<u8>> {
        let meta = self.meta.as_ref().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let model = self.model().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let opts = GgufExport {
            dtype,
            name: "webtune",
            tokenizer: meta.gguf.as_ref().map(|g| &g.tokenizer),
            chat_template: meta.gguf.as_ref().and_then(|g| g.chat_template.as_deref()),
        };
        export_gguf(self.gpu, model, &opts).await
    }

    /// The training state (trainable weights, AdamW moments, step, data order, settings).
    pub async fn save_state(&mut self) -> Result<Vec<u8>> {
        self.start()?;
        self.run.as_ref().unwrap().save().await
    }

    /// The settings a saved state was trained with: its `settings` entry, else (older
    /// states) the current settings with the state's run configuration.
    pub fn state_settings(&self, ck: &Checkpoint) -> Result<Settings> {
        match ck.meta().get("settings") {
            Some(v) => Settings::from_json(v),
            None => Ok(self.settings.with_run_config(&ck.run_config()?)),
        }
    }

    /// Continue from a saved state: its settings replace the current ones; the model and
    /// training data must be those of the saved run, and anything that differs is named.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<Plan> {
        let ck = Checkpoint::parse(bytes)?;
        let s = self.state_settings(&ck)?;
        self.configure(s)?;
        self.drop_run();
        self.start()?;
        self.run.as_mut().unwrap().restore(&ck)?;
        Ok(self.plan())
    }

    /// The run as a transformers + TRL + PEFT + accelerate project (the page's "Continue on
    /// a GPU cluster"): `export_run`'s files, with the data as given and, under LoRA, the
    /// adapter as trained so far in `adapter/`, which train.py continues from.
    pub async fn export_project(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let meta = self.meta.as_ref().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let model = self.model().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let (_, train) = self.train_text.as_ref().ok_or_else(|| Error::Usage("load a dataset first".into()))?;
        let hub_id = meta.name.contains('/') && crate::load::hub::validate_model_id(&meta.name).is_ok();
        let base = if meta.source() == "gguf" || hub_id {
            ExportModel::from_arg(&meta.name)
        } else {
            ExportModel {
                id: None,
                note: Some(format!(
                    "webtune trained on local files (`{}`) picked in the page; set `\"model\"` in train.py's \
                     settings block to that folder (copied next to train.py) or to its Hugging Face id.",
                    meta.name
                )),
            }
        };
        let mut adapter_files = Vec::new();
        if model.lora.is_some() {
            for (name, bytes) in self.export(Some(Format::Peft)).await? {
                adapter_files.push((format!("adapter/{name}"), bytes));
            }
        }
        let input = ExportInput {
            settings: &self.settings,
            model: &base,
            train,
            eval: self.eval_text.as_ref().map(|(_, t)| t.as_str()),
            adapter: (!adapter_files.is_empty()).then_some("adapter"),
        };
        let mut files = export_run(&input)?;
        files.extend(adapter_files);
        Ok(files)
    }
}
