//! Host-side batch planning: which positions carry loss and with what weight.
//!
//! The loss is L = sum_i w_i * nll_i over the positions i that carry loss, where the
//! weights encode the normalization of the chosen mode over the WHOLE accumulated batch,
//! so K micro-batches give exactly the gradient of one batch of K times the size:
//! - per-example SFT: w = 1 / (N * |y_n|)   (the source document's formula, the default)
//! - per-token SFT:   w = 1 / (number of answer tokens in the batch)
//! - all tokens:      w = 1 / (number of next-token positions in the batch)

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LossMode {
    #[default]
    PerExample,
    PerToken,
    AllTokens,
}

impl FromStr for LossMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "per-example" => Ok(LossMode::PerExample),
            "per-token" => Ok(LossMode::PerToken),
            "all-tokens" => Ok(LossMode::AllTokens),
            _ => Err(Error::Usage(format!("unknown loss mode `{s}` (per-example, per-token or all-tokens)"))),
        }
    }
}

impl fmt::Display for LossMode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            LossMode::PerExample => "per-example",
            LossMode::PerToken => "per-token",
            LossMode::AllTokens => "all-tokens",
        })
    }
}

/// One tokenized example. `trained[i]` says whether token i is a target (predicted from
/// the tokens before it): the answer tokens and the token that ends the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
    /// Where the example came from, for error messages (e.g. "data.jsonl:12").
    pub origin: String,
}

impl Example {
    /// A prompt/answer pair: tokens `[prompt_len..]` are trained.
    pub fn prompt_answer(ids: Vec<u32>, prompt_len: usize, origin: impl Into<String>) -> Example {
        let trained = (0..ids.len()).map(|i| i >= prompt_len.max(1)).collect();
        Example { ids, trained, origin: origin.into() }
    }

    /// The targets under `mode`: all tokens but the first, or the trained ones.
    fn targets(&self, mode: LossMode) -> Vec<bool> {
        match mode {
            LossMode::AllTokens => (0..self.ids.len()).map(|i| i > 0).collect(),
            _ => self.trained.iter().enumerate().map(|(i, &t)| t && i > 0).collect(),
        }
    }
}

/// One micro-batch, padded to its longest example: everything the GPU step uploads.
#[derive(Clone, Debug, Default)]
pub struct MicroBatch {
    /// B, T
    pub b: usize,
    pub t: usize,
    /// (B*T) token ids, right-padded with 0.
    pub ids: Vec<u32>,
    /// (B*T) position ids.
    pub pos: Vec<u32>,
    /// (B*T) attention segments: a query sees keys of its own segment only. Padding gets
    /// a segment of its own so real tokens never see it.
    pub seg: Vec<u32>,
    /// (N) rows r = b*T + t whose next token t+1 is a target.
    pub loss_rows: Vec<u32>,
    /// (N) the target token of each loss row.
    pub targets: Vec<u32>,
    /// (N) the loss weight of each row (see the module docs).
    pub weights: Vec<f32>,
    /// (N) the index (in the whole batch) of the example each loss row belongs to.
    pub row_example: Vec<u32>,
}

pub const PAD_SEGMENT: u32 = u32::MAX;

/// Split `examples` (one accumulated batch) into micro-batches of at most `micro` examples,
/// with loss weights normalized over the whole batch.
pub fn plan(examples: &[Example], mode: LossMode, micro: usize) -> Result<Vec<MicroBatch>> {
    plan_packed(examples, mode, micro, 0)
}

/// `plan`, packing each micro-batch's examples into rows of up to `pack` tokens (0: one
/// example per row, padded). Packed examples keep their own positions (from 0) and
/// attention segment, so no token sees another example: the loss and its gradient are
/// those of the padded batch, with less padding to compute.
pub fn plan_packed(examples: &[Example], mode: LossMode, micro: usize, pack: usize) -> Result<Vec<MicroBatch>> {
    if examples.is_empty() {
        return Err(Error::Data("the batch is empty".into()));
    }
    let targets: Vec<Vec<bool>> = examples.iter().map(|e| e.targets(mode)).collect();
    let mut total = 0usize;
    for (e, t) in examples.iter().zip(&targets) {
        if e.trained.len() != e.ids.len() {
            return Err(Error::Data(format!("{}: loss mask length differs from token count", e.origin)));
        }
        let n = t.iter().filter(|&&x| x).count();
        if n == 0 {
            return Err(Error::Data(match mode {
                LossMode::AllTokens => format!("{}: fewer than two tokens, nothing to predict", e.origin),
                _ => format!("{}: no answer token carries loss (empty answer, or truncated away)", e.origin),
            }));
        }
        total += n;
    }
    let n_ex = examples.len() as f64;
    let mut out = Vec::new();
    for (chunk_i, chunk) in examples.chunks(micro.max(1)).enumerate() {
        let base = chunk_i * micro.max(1);
        // Rows of (example index in chunk, offset in row): first fit, in order.
        let mut rows: Vec<(Vec<(usize, usize)>, usize)> = Vec::new();
        for (j, e) in chunk.iter().enumerate() {
            let len = e.ids.len();
            let fit = if pack > 0 { rows.iter().position(|(_, used)| used + len <= pack) } else { None };
            match fit {
                Some(r) => {
                    let at = rows[r].1;
                    rows[r].0.push((j, at));
                    rows[r].1 += len;
                }
                None => rows.push((vec![(j, 0)], len)),
            }
        }
        let t = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1);
        let b = rows.len();
        let mut mb = MicroBatch {
            b,
            t,
            ids: vec![0; b * t],
            pos: vec![0; b * t],
            seg: vec![PAD_SEGMENT; b * t],
            ..Default::default()
        };
        // Loss rows in example order (so per-row results line up with `examples`).
        let mut placed: Vec<(usize, usize, usize)> =
            rows.iter().enumerate().flat_map(|(r, (m, _))| m.iter().map(move |&(j, at)| (j, r, at))).collect();
        placed.sort();
        for (j, row, at) in placed {
            let e = &chunk[j];
            let n = base + j;
            let tg = &targets[n];
            let count = tg.iter().filter(|&&x| x).count() as f64;
            let w = match mode {
                LossMode::PerExample => 1.0 / (n_ex * count),
                LossMode::PerToken | LossMode::AllTokens => 1.0 / total as f64,
            };
            for (i, &id) in e.ids.iter().enumerate() {
                let r = row * t + at + i;
                mb.ids[r] = id;
                mb.pos[r] = i as u32;
                // The segment is the example's slot in its row: packed neighbours differ.
                mb.seg[r] = at as u32;
                // Row i predicts token i + 1 of the same example.
                if i + 1 < e.ids.len() && tg[i + 1] {
                    mb.loss_rows.push(r as u32);
                    mb.targets.push(e.ids[i + 1]);
                    mb.weights.push(w as f32);
                    mb.row_example.push(n as u32);
                }
            }
        }
        out.push(mb);
    }
    Ok(out)
}

/// Per-example scores from the per-row negative log-likelihoods of a planned batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ExampleScore {
    /// Mean NLL over the example's target tokens.
    pub mean_nll: f64,
    pub sum_nll: f64,
    pub tokens: usize,
    pub targets: usize,
}

/// Combine the per-row NLLs (in plan order) into per-example scores and the batch loss.
pub fn summarize(examples: &[Example], batches: &[MicroBatch], nll: &[Vec<f32>]) -> (Vec<ExampleScore>, f64) {
    let mut scores: Vec<ExampleScore> = examples
        .iter()
        .map(|e| ExampleScore { mean_nll: 0.0, sum_nll: 0.0, tokens: e.ids.len(), targets: 0 })
        .collect();
    let mut loss = 0.0;
    for (mb, nll) in batches.iter().zip(nll) {
        for ((&ex, &w), &l) in mb.row_example.iter().zip(&mb.weights).zip(nll) {
            let s = &mut scores[ex as usize];
            s.sum_nll += l as f64;
            s.targets += 1;
            loss += w as f64 * l as f64;
        }
    }
    for s in &mut scores {
        s.mean_nll = s.sum_nll / s.targets.max(1) as f64;
    }
    (scores, loss)
}
