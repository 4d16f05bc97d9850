//! Evaluation and generation: the validation loss, exact match on held-out examples,
//! and streaming generation, on the model as it is now (during a run or not).

use super::report::{ExactItem, ExactMatch, GenOptions, Generated, Prompt, ValidLoss};
use super::{Item, Session};
use crate::error::{Error, Result};
use crate::model::generate::{Decoder, GenerateConfig, Sampling};
use crate::tokenize::Message;
use crate::train::{Example, ExampleScore, TrainConfig, Trainer};

impl<'g> Session<'g> {
    /// The validation loss (the held-out set, else the training set) under the loss mode.
    pub async fn validate(&mut self) -> Result<ValidLoss> {
        let split = self.split()?;
        let (set, which) = if split.valid.is_empty() {
            (split.train_examples(), "train")
        } else {
            (split.valid_examples(), "validation")
        };
        let (_, loss) = self.score_examples(&set).await?;
        Ok(ValidLoss { loss, examples: set.len(), split: which, step: self.step_count() })
    }

    /// Per-example scores and the loss of `set` under the loss mode, parameters unchanged.
    pub async fn score_examples(&mut self, set: &[Example]) -> Result<(Vec<ExampleScore>, f64)> {
        let mode = self.settings.loss;
        match self.run.as_mut() {
            Some(run) => run.trainer.score(set, mode).await,
            None => {
                let model = self.model.take().ok_or_else(|| Error::Usage("load a model first".into()))?;
                let tc = TrainConfig { micro_batch: self.settings.micro(), ..Default::default() };
                let mut t = Trainer::new(self.gpu, model, tc)?;
                let r = t.score(set, mode).await;
                self.model = Some(t.into_model());
                r
            }
        }
    }

    /// Exact match on up to `limit` held-out examples (the evaluation file, else the
    /// validation share): each example's prompt (the tokens before its first trained
    /// token) is completed greedily, and the answer (special tokens removed, trimmed)
    /// must equal the example's.
    pub async fn exact_match(&mut self, limit: usize) -> Result<ExactMatch> {
        let set: Vec<Item> = match &self.eval {
            Some(e) => e.items.clone(),
            None => self.split()?.valid,
        };
        let tok = self.tokenizer()?;
        let items: Vec<(Vec<u32>, Vec<u32>, Option<String>)> = set
            .iter()
            .filter_map(|i| {
                let e = &i.example;
                let first = e.trained.iter().enumerate().skip(1).find(|(_, &t)| t)?.0;
                Some((e.ids[..first].to_vec(), e.ids[first..].to_vec(), i.prompt.clone()))
            })
            .take(limit.max(1))
            .collect();
        if items.is_empty() {
            return Err(Error::Usage(
                "exact match needs held-out examples with a prompt and an answer (an evaluation file or a validation share)".into(),
            ));
        }
        let model = self.model().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let longest = items.iter().map(|(p, a, _)| p.len() + a.len() + 8).max().unwrap_or(1).min(model.max_seq());
        let mut dec = Decoder::new(self.gpu, model, 1, longest)?;
        let mut out = Vec::new();
        let mut correct = 0;
        for (prompt, answer, words) in &items {
            let cfg = GenerateConfig {
                max_new_tokens: (answer.len() + 8).min(longest.saturating_sub(prompt.len()).max(1)),
                sampling: Sampling::greedy(),
                stop_ids: tok.eos_ids(),
                capacity: None,
            };
            let g = dec.generate(prompt, &cfg, |_| true).await?;
            let expected = tok.decode_skip_special(answer)?.trim().to_string();
            let got = tok.decode_skip_special(&g.tokens)?.trim().to_string();
            let ok = got == expected;
            correct += ok as usize;
            let prompt = match words {
                Some(w) => w.clone(),
                None => tok.decode_skip_special(prompt)?,
            };
            out.push(ExactItem { prompt, expected, got, ok });
        }
        Ok(ExactMatch {
            score: correct as f64 / items.len() as f64,
            correct,
            total: items.len(),
            items: out,
            step: self.step_count(),
        })
    }

    /// Generate a reply, streaming text pieces to `on_text` (returning false stops).
    pub async fn generate(
        &self,
        prompt: Prompt,
        opts: &GenOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generated> {
        let tok = self.tokenizer()?;
        let (text, special) = match prompt {
            Prompt::Chat(messages) => (tok.require_chat_template()?.render(&messages, true)?, false),
            Prompt::Text(s) if opts.chat => {
                (tok.require_chat_template()?.render(&[Message::new("user", s)], true)?, false)
            }
            Prompt::Text(s) => (s, true),
        };
        let ids = tok.encode(&text, special)?;
        let cfg = GenerateConfig {
            max_new_tokens: opts.max_new_tokens.max(1),
            sampling: Sampling { temperature: opts.temperature, top_k: opts.top_k, top_p: opts.top_p, seed: opts.seed },
            stop_ids: tok.eos_ids(),
            capacity: None,
        };
        let model = self.model().ok_or_else(|| Error::Usage("load a model first".into()))?;
        let mut out: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let g = crate::model::generate::generate(self.gpu, model, &ids, &cfg, |id| {
            out.push(id);
            // Stream what decodes cleanly so far (a character may span tokens).
            match tok.decode_skip_special(&out) {
                Ok(s) if s.len() > shown && !s.ends_with('\u{fffd}') => {
                    let piece = s[shown..].to_string();
                    shown = s.len();
                    on_text(&piece)
                }
                _ => true,
            }
        })
        .await?;
        Ok(Generated {
            text: tok.decode_skip_special(&g.tokens)?,
            tokens: g.tokens.len(),
            prompt_tokens: ids.len(),
            stop: format!("{:?}", g.stop),
        })
    }
}
