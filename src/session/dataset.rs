//! Data preparation, the one path from JSONL text to the examples a run trains and
//! validates on: parse (every format of [`crate::data`]), tokenize through the model's
//! tokenizer and chat template (or take pre-tokenized lines), cut to the maximum length
//! (prompt tokens from the left first, then answer tokens from the right), drop what is
//! left with nothing to train, and hold out the validation set (an evaluation file, else
//! a seeded share of the training file).

use serde::Serialize;

use crate::data::{self, DataOptions, DataReport, Record};
use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;
use crate::train::{Example, LossMode};

use super::settings::Settings;

/// One example and what the page shows of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub example: Example,
    /// The user's words for exact match and samples: the last user message before the
    /// first trained turn, the prompt of a prompt/completion pair; None for text.
    pub prompt: Option<String>,
    /// What a sample generation starts from: the example up to its first answer.
    pub sample: Option<Sample>,
}

/// A prompt to sample from, in the form `Session::generate` takes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// What the page shows for it (the user's words).
    pub label: String,
    /// A string, or the chat messages before the first answer.
    pub input: serde_json::Value,
    /// Whether `input` goes through the chat template.
    pub chat: bool,
}

/// A JSONL file as parsed and tokenized (before the split).
#[derive(Clone, Debug, Default)]
pub struct DataFile {
    pub name: String,
    pub items: Vec<Item>,
    /// The format of its lines ("messages", "prompt/completion", "text", "tokenized",
    /// or "mixed").
    pub format: String,
    pub report: DataReport,
    /// Examples dropped: nothing left to train after cutting to the maximum length.
    pub dropped: usize,
}

/// What the user's words are in a record.
fn prompt_of(r: &Record) -> Option<String> {
    match r {
        Record::PromptCompletion { prompt, .. } => Some(prompt.clone()),
        Record::Chat { messages, trained_from, .. } => {
            let first_answer = (*trained_from..messages.len()).find(|&k| messages[k].role == "assistant")?;
            messages[..first_answer].iter().rev().find(|m| m.role == "user").map(|m| m.content.clone())
        }
        Record::Text(_) | Record::Tokenized { .. } => None,
    }
}

/// A record cut before its first answer (text: its first half, by words).
fn sample_of(r: &Record) -> Option<Sample> {
    match r {
        Record::PromptCompletion { prompt, .. } => {
            Some(Sample { label: prompt.clone(), input: prompt.clone().into(), chat: false })
        }
        Record::Chat { messages, trained_from, .. } => {
            let first = (*trained_from..messages.len()).find(|&k| messages[k].role == "assistant")?;
            let before = &messages[..first];
            let label = before.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
            Some(Sample { label, input: serde_json::to_value(before).ok()?, chat: true })
        }
        Record::Text(t) => {
            let words: Vec<&str> = t.split_inclusive(char::is_whitespace).collect();
            let head: String = words[..(words.len() / 2).max(2).min(words.len())].concat();
            Some(Sample { label: head.clone(), input: head.into(), chat: false })
        }
        Record::Tokenized { .. } => None,
    }
}

/// Whether `e` still has a target under `mode`.
fn trainable(e: &Example, mode: LossMode) -> bool {
    match mode {
        LossMode::AllTokens => e.ids.len() >= 2,
        _ => e.trained.iter().skip(1).any(|&t| t),
    }
}

/// Parse, tokenize and cut one JSONL text. `max_len` is the settings' maximum length
/// already capped by the model's positions; `vocab` the model's vocabulary (ids outside
/// it are an error naming the line).
pub fn read(
    tok: Option<&Tokenizer>,
    name: &str,
    text: &str,
    s: &Settings,
    max_len: usize,
    vocab: usize,
) -> Result<DataFile> {
    let records = data::parse_jsonl(name, text)?;
    let mut formats: Vec<&str> = records.iter().map(|(_, r)| r.format_name()).collect();
    formats.dedup();
    let format = if formats.iter().all(|f| *f == formats[0]) { formats[0] } else { "mixed" }.to_string();
    let opts = DataOptions { max_len: Some(max_len), last_turn_only: s.last_turn_only, ..Default::default() };
    let (examples, report) = match tok {
        Some(tok) => data::build_examples(tok, name, &records, &opts)?,
        None => {
            let mut ex = data::parse_tokenized_jsonl(name, text)?;
            let mut report = DataReport { examples: ex.len(), ..Default::default() };
            for e in &mut ex {
                let (p, a) = data::truncate(e, max_len);
                report.truncated_prompt += (p && !a) as usize;
                report.truncated_answer += a as usize;
                report.tokens += e.ids.len();
                report.trained_tokens += e.trained.iter().skip(1).filter(|&&t| t).count();
            }
            (ex, report)
        }
    };
    for e in &examples {
        if let Some(&bad) = e.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Data(format!(
                "{}: token id {bad} is outside the model's vocabulary of {vocab}",
                e.origin
            )));
        }
    }
    let n = examples.len();
    let items: Vec<Item> = examples
        .into_iter()
        .zip(&records)
        .filter(|(e, _)| trainable(e, s.loss))
        .map(|(example, (_, r))| Item { example, prompt: prompt_of(r), sample: sample_of(r) })
        .collect();
    let dropped = n - items.len();
    Ok(DataFile { name: name.to_string(), format, report, dropped, items })
}

/// The examples of a run: training, validation (for the validation loss) and the
/// held-out set that exact match scores (the evaluation file, else the validation share).
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub train: Vec<Item>,
    pub valid: Vec<Item>,
}

impl Split {
    pub fn train_examples(&self) -> Vec<Example> {
        self.train.iter().map(|i| i.example.clone()).collect()
    }
    pub fn valid_examples(&self) -> Vec<Example> {
        self.valid.iter().map(|i| i.example.clone()).collect()
    }
}

/// Hold out the validation set: the evaluation file when there is one, else
/// `val_share` of the training file chosen by a shuffle from the seed, at most
/// `val_limit` of them (0: all).
pub fn split(train: &DataFile, eval: Option<&DataFile>, s: &Settings) -> Result<Split> {
    if train.items.is_empty() {
        return Err(Error::Setting {
            field: "max_len".into(),
            message: format!(
                "no example of {} keeps a token to train within {} tokens: raise the maximum length",
                train.name, s.max_len
            ),
        });
    }
    let (train_items, mut valid) = match eval {
        Some(e) => (train.items.clone(), e.items.clone()),
        None if s.val_share > 0.0 => data::split(train.items.clone(), s.val_share, s.seed)?,
        None => (train.items.clone(), Vec::new()),
    };
    if s.val_limit > 0 {
        valid.truncate(s.val_limit);
    }
    Ok(Split { train: train_items, valid })
}

/// What the page and the command line show of a data file.
#[derive(Clone, Debug, Serialize)]
pub struct DataSummary {
    pub name: String,
    pub format: String,
    pub examples: usize,
    pub dropped: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    pub longest: usize,
    pub truncated_prompt: usize,
    pub truncated_answer: usize,
    pub warning: Option<String>,
}

impl DataFile {
    pub fn summary(&self) -> DataSummary {
        let r = &self.report;
        let mut warning = r.warning();
        if self.dropped > 0 {
            let w = format!(
                "{} example(s) kept no token to train after cutting to the maximum length and were dropped",
                self.dropped
            );
            warning = Some(match warning {
                Some(x) => format!("{x}; {w}"),
                None => w,
            });
        }
        DataSummary {
            name: self.name.clone(),
            format: self.format.clone(),
            examples: self.items.len(),
            dropped: self.dropped,
            tokens: self.items.iter().map(|i| i.example.ids.len()).sum(),
            trained_tokens: self.items.iter().map(|i| i.example.trained.iter().skip(1).filter(|&&t| t).count()).sum(),
            longest: self.items.iter().map(|i| i.example.ids.len()).max().unwrap_or(0),
            truncated_prompt: r.truncated_prompt,
            truncated_answer: r.truncated_answer,
            warning,
        }
    }
}
