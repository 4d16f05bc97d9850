//! Reading a fixture folder: the model, the examples and the expected values.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use webtune::gpu::Gpu;
use webtune::model::Model;
use webtune::train::{AdamW, Example, LossMode, TrainConfig, Trainer};

pub const ARCHS: &[&str] = &["llama", "qwen2", "gpt2", "qwen3", "gemma3"];
pub const MODES: &[LossMode] = &[LossMode::PerExample, LossMode::PerToken, LossMode::AllTokens];

pub struct Fixture {
    pub dir: PathBuf,
    pub json: Value,
    pub examples: Vec<Example>,
    pub expected: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    pub fn load(arch: &str) -> Fixture {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(arch);
        let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap()).unwrap();
        let examples = json["examples"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let ids: Vec<u32> = e["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                Example::prompt_answer(ids, e["prompt_len"].as_u64().unwrap() as usize, format!("{arch} example {i}"))
            })
            .collect();
        let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let expected = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                assert_eq!(v.dtype(), safetensors::Dtype::F32);
                let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
                (name, (v.shape().to_vec(), data))
            })
            .collect();
        Fixture { dir, json, examples, expected }
    }

    pub fn model(&self, gpu: &Gpu) -> Model {
        webtune::load::model_from_hf_dir(gpu, &self.dir).unwrap()
    }

    pub fn trainer<'g>(&self, gpu: &'g Gpu, loss: LossMode, micro_batch: usize) -> Trainer<'g> {
        let a = &self.json["adamw"];
        let f = |k: &str| a[k].as_f64().unwrap() as f32;
        let adamw = AdamW {
            lr: f("lr"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
            max_grad_norm: f("max_grad_norm"),
        };
        Trainer::new(gpu, self.model(gpu), TrainConfig { loss, micro_batch, adamw, ..Default::default() }).unwrap()
    }

    pub fn loss(&self, mode: LossMode) -> f64 {
        self.json["losses"][mode.to_string()].as_f64().unwrap()
    }
}
