//! Checkpoints: the whole state of a training run in one safetensors file, so a run can
//! stop anywhere between two steps and continue bit for bit, in the same process, in
//! another one, or in a browser tab.
//!
//! Tensors (F32), one per trainable parameter and kind, by Hugging Face name:
//! - `NAME`             the parameter's current values
//! - `adamw.m.NAME`     AdamW's first moment
//! - `adamw.v.NAME`     AdamW's second moment
//!
//! Frozen parameters are not stored: a checkpoint is restored into a trainer built from
//! the same base model. The safetensors metadata entry `webtune` holds JSON:
//! `{"format": "webtune-checkpoint", "version": 1, "model": {..config..}, "params":
//! [{"name", "shape", "trainable"}], "run": {..RunConfig..}, "state": {"step", "epoch",
//! "position", "epoch_rng", "tokens", "examples", "data_fingerprint", "next_lr"}}`.
//! The optimizer step is also the schedule's position; `epoch`, `position` and `epoch_rng`
//! give the data order (the order of the current epoch is redrawn from `epoch_rng`).

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::run::{f32_json, Run, RunConfig, RunState};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Model;

pub const FORMAT: &str = "webtune-checkpoint";
pub const VERSION: u64 = 1;
/// The safetensors metadata key holding the JSON description.
pub const META_KEY: &str = "webtune";

pub use crate::error::{CheckpointError, Difference};

fn corrupt(s: impl Into<String>) -> Error {
    Error::Checkpoint(CheckpointError::Corrupt(s.into()))
}

/// The model's shape as the checkpoint records it.
fn model_json(model: &Model) -> Value {
    let c = &model.cfg;
    json!({
        "arch": format!("{:?}", c.arch), "vocab": c.vocab, "hidden": c.hidden, "layers": c.layers,
        "heads": c.heads, "kv_heads": c.kv_heads, "head_dim": c.head_dim, "ffn": c.ffn,
        "max_pos": c.max_pos, "norm_eps": f32_json(c.norm_eps), "tied": c.tied, "qkv_bias": c.qkv_bias,
        "o_bias": c.o_bias, "mlp_bias": c.mlp_bias, "inv_freq": c.inv_freq.iter().map(|&x| f32_json(x)).collect::<Vec<_>>(),
    })
}

fn params_json(model: &Model) -> Value {
    model.params.specs.iter().map(|s| json!({"name": s.name, "shape": s.shape, "trainable": s.trainable})).collect()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().take_while(|(i, _)| *i < 57).last().map_or(0, |(i, c)| i + c.len_utf8())]
        )
    } else {
        s
    }
}

/// Differences between two flat JSON objects, under `prefix`, skipping `ignore`d keys.
fn diff_objects(prefix: &str, saved: &Value, current: &Value, ignore: &[&str], out: &mut Vec<Difference>) {
    let empty = serde_json::Map::new();
    let (a, b) = (saved.as_object().unwrap_or(&empty), current.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if ignore.contains(&k.as_str()) {
            continue;
        }
        let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
        if x != y {
            out.push(Difference { what: format!("{prefix}.{k}"), checkpoint: short(x), current: short(y) });
        }
    }
}

fn diff_params(saved: &Value, model: &Model, out: &mut Vec<Difference>) {
    let mut seen = HashMap::new();
    for p in saved.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        seen.insert(name.clone(), ());
        let what = format!("parameter {name}");
        match model.params.id(&name) {
            Err(_) => out.push(Difference { what, checkpoint: "present".into(), current: "absent".into() }),
            Ok(i) => {
                let s = &model.params.specs[i];
                if p["shape"] != json!(s.shape) {
                    out.push(Difference {
                        what: format!("{what} shape"),
                        checkpoint: p["shape"].to_string(),
                        current: json!(s.shape).to_string(),
                    });
                }
                if p["trainable"] != json!(s.trainable) {
                    let t = |b: bool| if b { "trainable" } else { "frozen" }.to_string();
                    out.push(Difference {
                        what,
                        checkpoint: t(p["trainable"].as_bool().unwrap_or(false)),
                        current: t(s.trainable),
                    });
                }
            }
        }
    }
    for s in &model.params.specs {
        if !seen.contains_key(&s.name) {
            out.push(Difference {
                what: format!("parameter {}", s.name),
                checkpoint: "absent".into(),
                current: "present".into(),
            });
        }
    }
}

/// A parsed checkpoint (borrowing the bytes).
pub struct Checkpoint<'a> {
    meta: Value,
    st: SafeTensors<'a>,
}

impl<'a> Checkpoint<'a> {
    /// Parse and check the container; typed errors for truncated, foreign or newer files.
    pub fn parse(bytes: &'a [u8]) -> Result<Checkpoint<'a>> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
        let text = header.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| {
            Error::Checkpoint(CheckpointError::Foreign(format!("no `{META_KEY}` entry in the safetensors metadata")))
        })?;
        let meta: Value =
            serde_json::from_str(text).map_err(|e| corrupt(format!("the `{META_KEY}` metadata is not JSON ({e})")))?;
        if meta["format"] != FORMAT {
            return Err(Error::Checkpoint(CheckpointError::Foreign(format!("format {}", meta["format"]))));
        }
        let version = meta["version"].as_u64().unwrap_or(0);
        if version != VERSION {
            return Err(Error::Checkpoint(CheckpointError::Version { found: version, supported: VERSION }));
        }
        Ok(Checkpoint { meta, st })
    }

    /// The JSON description (see the module docs).
    pub fn meta(&self) -> &Value {
        &self.meta
    }

    /// The run configuration it was saved with.
    pub fn run_config(&self) -> Result<RunConfig> {
        RunConfig::from_json(&self.meta["run"]).map_err(|e| corrupt(e.to_string()))
    }

    /// Optimizer steps done when it was saved.
    pub fn step(&self) -> u64 {
        self.meta["state"]["step"].as_u64().unwrap_or(0)
    }

    fn state(&self) -> Result<(u64, RunState)> {
        let s = &self.meta["state"];
        let u = |k: &str| s[k].as_u64().ok_or_else(|| corrupt(format!("state.{k} is missing")));
        let epoch_rng =
            s["epoch_rng"].as_str().and_then(|x| x.parse().ok()).ok_or_else(|| corrupt("state.epoch_rng"))?;
        Ok((
            u("step")?,
            RunState { epoch: u("epoch")?, position: u("position")? as usize, epoch_rng, tokens: u("tokens")? },
        ))
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&'a [u8]> {
        let t = self.st.tensor(name).map_err(|_| corrupt(format!("tensor `{name}` is missing")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(corrupt(format!("tensor `{name}` is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape())));
        }
        Ok(t.data())
    }
}

impl Run<'_> {
    /// The whole training state as checkpoint bytes (reads the trainable arenas back).
    pub async fn save(&self) -> Result<Vec<u8>> {
        let gpu = self.trainer.gpu();
        let model = &self.trainer.model;
        let p = &model.params;
        // (weights, m, v) of every trainable arena, on the host.
        let mut host: HashMap<usize, [Vec<f32>; 3]> = HashMap::new();
        for (i, a) in p.arenas.iter().enumerate().filter(|(_, a)| a.trainable) {
            let (m, v) = (a.m.as_ref().unwrap(), a.v.as_ref().unwrap());
            host.insert(i, [gpu.read_f32(&a.weights).await?, gpu.read_f32(m).await?, gpu.read_f32(v).await?]);
        }
        let mut names = Vec::new();
        let mut views = Vec::new();
        for (i, s) in p.specs.iter().enumerate().filter(|(_, s)| s.trainable) {
            let slot = &p.slots[i];
            let arrays = &host[&slot.arena];
            for (k, prefix) in ["", "adamw.m.", "adamw.v."].iter().enumerate() {
                let data = &arrays[k][slot.offset..slot.offset + s.numel()];
                names.push(format!("{prefix}{}", s.name));
                views.push(
                    TensorView::new(Dtype::F32, s.shape.clone(), bytemuck::cast_slice(data))
                        .map_err(|e| Error::Usage(format!("{}: {e}", s.name)))?,
                );
            }
        }
        let st = &self.state;
        let meta = json!({
            "format": FORMAT,
            "version": VERSION,
            "model": model_json(model),
            "params": params_json(model),
            "run": self.cfg.to_json(),
            "state": {
                "step": self.trainer.step,
                "epoch": st.epoch,
                "position": st.position,
                "epoch_rng": st.epoch_rng.to_string(),
                "tokens": st.tokens,
                "examples": self.train.len(),
                "data_fingerprint": format!("{:016x}", self.data_fingerprint()),
                "next_lr": self.schedule().lr(self.trainer.step),
            },
        });
        let mut meta = meta;
        for (k, v) in &self.extra_meta {
            meta[k.as_str()] = v.clone();
        }
        let info = HashMap::from([(META_KEY.to_string(), meta.to_string())]);
        safetensors::serialize(names.into_iter().zip(views), Some(info))
            .map_err(|e| Error::Usage(format!("writing the checkpoint: {e}")))
    }

    /// Everything that must agree between the checkpoint and this run.
    pub fn differences(&self, ck: &Checkpoint) -> Vec<Difference> {
        let mut d = Vec::new();
        let model = &self.trainer.model;
        diff_objects("model", &ck.meta["model"], &model_json(model), &[], &mut d);
        diff_params(&ck.meta["params"], model, &mut d);
        // The micro-batch only splits the sums; validation does not touch the training.
        diff_objects("run", &ck.meta["run"], &self.cfg.to_json(), &["micro_batch", "eval_every"], &mut d);
        let s = &ck.meta["state"];
        let fp = format!("{:016x}", self.data_fingerprint());
        if s["examples"] != json!(self.train.len()) || s["data_fingerprint"] != json!(fp) {
            d.push(Difference {
                what: "the training set".into(),
                checkpoint: format!("{} examples (fingerprint {})", s["examples"], s["data_fingerprint"]),
                current: format!("{} examples (fingerprint \"{fp}\")", self.train.len()),
            });
        }
        d
    }

    /// Restore a checkpoint saved by [`Run::save`] from a run over the same base model,
    /// configuration and training set: parameters, moments, step, schedule position and
    /// data order. Anything that differs is a [`CheckpointError::Mismatch`] naming it.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let d = self.differences(ck);
        if !d.is_empty() {
            return Err(Error::Checkpoint(CheckpointError::Mismatch(d)));
        }
        let (step, state) = ck.state()?;
        if state.position > self.train.len() {
            return Err(corrupt(format!("data position {} beyond {} examples", state.position, self.train.len())));
        }
        let gpu = self.trainer.gpu();
        let p = &self.trainer.model.params;
        // Assemble every trainable arena on the host first: nothing is written unless all
        // tensors are present and well-formed.
        let mut host: Vec<(usize, [Vec<f32>; 3])> = Vec::new();
        for (ai, a) in p.arenas.iter().enumerate().filter(|(_, a)| a.trainable) {
            let mut arrays = [vec![0f32; a.len], vec![0f32; a.len], vec![0f32; a.len]];
            for (i, s) in p.specs.iter().enumerate().filter(|(i, _)| p.slots[*i].arena == ai) {
                let o = p.slots[i].offset;
                for (k, prefix) in ["", "adamw.m.", "adamw.v."].iter().enumerate() {
                    let bytes = ck.tensor(&format!("{prefix}{}", s.name), &s.shape)?;
                    for (dst, b) in arrays[k][o..o + s.numel()].iter_mut().zip(bytes.chunks_exact(4)) {
                        *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
            host.push((ai, arrays));
        }
        for (ai, [w, m, v]) in &host {
            let a = &p.arenas[*ai];
            gpu.write_f32(&a.weights, w);
            gpu.write_f32(a.m.as_ref().unwrap(), m);
            gpu.write_f32(a.v.as_ref().unwrap(), v);
        }
        self.trainer.step = step;
        self.state = state;
        self.draw_order();
        Ok(())
    }

    /// [`Checkpoint::parse`] then [`Run::restore`].
    pub fn restore_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let ck = Checkpoint::parse(bytes)?;
        self.restore(&ck)
    }
}

/// Every parameter of `model` (trainable and frozen) as a Hugging Face `model.safetensors`
/// (F32, HF names, `{"format": "pt"}` metadata).
pub async fn export_hf_safetensors(gpu: &Gpu, model: &Model) -> Result<Vec<u8>> {
    let p = &model.params;
    let mut arenas = Vec::new();
    for a in &p.arenas {
        arenas.push(gpu.read_f32(&a.weights).await?);
    }
    // Compact frozen parameters, dequantized (they sit in no f32 arena).
    let mut compact = HashMap::new();
    for i in (0..p.specs.len()).filter(|&i| p.compact_slots[i].is_some()) {
        compact.insert(i, p.read(gpu, i).await?);
    }
    let views = p
        .specs
        .iter()
        .zip(&p.slots)
        .enumerate()
        .map(|(i, (s, slot))| {
            let data = match compact.get(&i) {
                Some(v) => &v[..],
                None => &arenas[slot.arena][slot.offset..slot.offset + s.numel()],
            };
            TensorView::new(Dtype::F32, s.shape.clone(), bytemuck::cast_slice(data))
                .map(|v| (s.name.clone(), v))
                .map_err(|e| Error::Usage(format!("{}: {e}", s.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(info)).map_err(|e| Error::Usage(format!("writing model.safetensors: {e}")))
}
