//! The training run around [`Trainer::step`]: a shuffled data order per epoch from a
//! seed, batches with gradient accumulation, the learning-rate schedule applied per step,
//! validation at intervals, and per-step statistics. The caller drives it one optimizer
//! step at a time (`run.next_step().await`), so a browser tab can pause between steps, and
//! can save the whole state to bytes between any two steps (see [`super::checkpoint`]).

use serde_json::{json, Value};

use super::batch::{Example, LossMode};
use super::schedule::{Schedule, ScheduleKind};
use super::trainer::Trainer;
use crate::error::{Error, Result};
use crate::ops::adamw::AdamW;
use crate::rng::Rng;

/// How long the run lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Optimizer steps; the data is cycled (reshuffled each epoch) as often as needed.
    Steps(u64),
    /// Whole passes over the training set, `ceil(examples / batch)` steps each (the last
    /// batch of an epoch holds the examples left over, as a DataLoader without drop_last).
    Epochs(u64),
}

/// Everything that decides what a run computes. `adamw.lr` is the base (peak) learning
/// rate; the schedule scales it at every step.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub loss: LossMode,
    pub adamw: AdamW,
    /// Examples per optimizer step (the accumulated batch).
    pub batch: usize,
    /// Micro-batches the batch is accumulated over: micro-batch = ceil(batch / grad_accum)
    /// unless `micro_batch` says otherwise.
    pub grad_accum: usize,
    /// Examples per forward/backward pass, overriding `batch / grad_accum`. It changes how
    /// the sums are split, not the result (beyond f32 rounding), so a checkpoint may be
    /// resumed with another micro-batch.
    pub micro_batch: Option<usize>,
    pub length: Length,
    pub schedule: ScheduleKind,
    /// Linear warm-up steps of the schedule.
    pub warmup: u64,
    /// Seed of the data order.
    pub seed: u64,
    /// Shuffle the data order every epoch (otherwise file order).
    pub shuffle: bool,
    /// Validation loss every this many steps (and after the last); 0: after the last only.
    pub eval_every: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            loss: LossMode::PerExample,
            adamw: AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 },
            batch: 8,
            grad_accum: 1,
            micro_batch: None,
            length: Length::Epochs(1),
            schedule: ScheduleKind::Linear,
            warmup: 0,
            seed: 0,
            shuffle: true,
            eval_every: 0,
        }
    }
}

impl RunConfig {
    /// Examples per forward/backward pass.
    pub fn micro(&self) -> usize {
        self.micro_batch.unwrap_or_else(|| self.batch.div_ceil(self.grad_accum.max(1))).max(1)
    }

    /// Optimizer steps of the whole run over `examples` training examples.
    pub fn total_steps(&self, examples: usize) -> u64 {
        match self.length {
            Length::Steps(n) => n,
            Length::Epochs(e) => e * examples.div_ceil(self.batch.max(1)) as u64,
        }
    }

    pub fn check(&self) -> Result<()> {
        let bad = |s: String| Err(Error::Usage(s));
        if self.batch == 0 {
            return bad("the batch size must be at least 1".into());
        }
        if self.grad_accum == 0 || self.grad_accum > self.batch {
            return bad(format!("gradient accumulation must be between 1 and the batch size {}", self.batch));
        }
        if self.micro_batch == Some(0) {
            return bad("the micro-batch must be at least 1".into());
        }
        if matches!(self.length, Length::Steps(0) | Length::Epochs(0)) {
            return bad("the run must last at least one step".into());
        }
        let a = &self.adamw;
        if !(a.lr.is_finite() && a.lr >= 0.0) {
            return bad(format!("the learning rate must be a finite non-negative number, not {}", a.lr));
        }
        if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) {
            return bad(format!("AdamW betas must lie in [0, 1), not ({}, {})", a.beta1, a.beta2));
        }
        if !(a.weight_decay >= 0.0 && a.max_grad_norm >= 0.0 && a.eps > 0.0) {
            return bad("weight decay and the clipping norm must be >= 0 and eps > 0".into());
        }
        Ok(())
    }

    /// The configuration as JSON (a checkpoint's `run` entry).
    pub fn to_json(&self) -> Value {
        let a = &self.adamw;
        let (unit, n) = match self.length {
            Length::Steps(n) => ("steps", n),
            Length::Epochs(n) => ("epochs", n),
        };
        let mut v = json!({
            "loss": self.loss.to_string(),
            "lr": f32_json(a.lr), "beta1": f32_json(a.beta1), "beta2": f32_json(a.beta2), "eps": f32_json(a.eps),
            "weight_decay": f32_json(a.weight_decay),
            // 0 is off (the kernel's convention); infinity has no JSON form.
            "max_grad_norm": f32_json(if a.max_grad_norm.is_finite() { a.max_grad_norm } else { 0.0 }),
            "batch": self.batch, "grad_accum": self.grad_accum, "micro_batch": self.micro_batch,
            "schedule": self.schedule.to_string(), "warmup": self.warmup,
            "seed": self.seed.to_string(), "shuffle": self.shuffle, "eval_every": self.eval_every,
        });
        v[unit] = json!(n);
        v
    }

    pub fn from_json(v: &Value) -> Result<RunConfig> {
        let bad = |k: &str| Error::Usage(format!("run configuration: missing or invalid `{k}`"));
        let f = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x as f32).ok_or_else(|| bad(k));
        let u = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        let s = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
        let length = match (v.get("steps").and_then(Value::as_u64), v.get("epochs").and_then(Value::as_u64)) {
            (Some(n), None) => Length::Steps(n),
            (None, Some(e)) => Length::Epochs(e),
            _ => return Err(bad("steps` or `epochs")),
        };
        Ok(RunConfig {
            loss: s("loss")?.parse()?,
            adamw: AdamW {
                lr: f("lr")?,
                beta1: f("beta1")?,
                beta2: f("beta2")?,
                eps: f("eps")?,
                weight_decay: f("weight_decay")?,
                // null: clipping off, as states written before 0 meant off wrote infinity.
                max_grad_norm: match v.get("max_grad_norm") {
                    Some(Value::Null) => 0.0,
                    _ => f("max_grad_norm")?,
                },
            },
            batch: u("batch")? as usize,
            grad_accum: u("grad_accum")? as usize,
            micro_batch: v.get("micro_batch").and_then(Value::as_u64).map(|m| m as usize),
            length,
            schedule: s("schedule")?.parse()?,
            warmup: u("warmup")?,
            seed: s("seed")?.parse().map_err(|_| bad("seed"))?,
            shuffle: v.get("shuffle").and_then(Value::as_bool).ok_or_else(|| bad("shuffle"))?,
            eval_every: u("eval_every")?,
        })
    }
}

/// An f32 as the JSON number of its shortest decimal form (`0.999`, not
/// `0.9990000128746033`), which reads back to the same f32.
pub(crate) fn f32_json(x: f32) -> Value {
    x.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

/// What one optimizer step did, handed to the `on_step` callback and returned by
/// [`Run::next_step`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Optimizer steps done, this one included (1 after the first step).
    pub step: u64,
    pub total_steps: u64,
    /// Epochs done, fractional (1.0 at the end of the first pass over the data).
    pub epoch: f64,
    /// The batch's loss before the update.
    pub loss: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub examples: usize,
    /// Tokens in the batch (padding excluded) and tokens that carried loss.
    pub tokens: usize,
    pub targets: usize,
    /// Wall time of the step by the run's clock, and tokens / that time.
    pub ms: f64,
    pub tokens_per_s: f64,
    /// The validation loss, on steps where it was measured.
    pub valid_loss: Option<f64>,
}

/// Where the run stands: everything beyond the trainer's parameters and moments that a
/// checkpoint must carry to continue exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunState {
    /// Epochs started before the current one (0 during the first pass).
    pub epoch: u64,
    /// Examples of the current epoch's order already consumed.
    pub position: usize,
    /// The RNG state the current epoch's order was drawn from.
    pub epoch_rng: u64,
    /// Tokens trained on so far.
    pub tokens: u64,
}

/// A clock in milliseconds: the run times steps with it (tokens/s).
pub type Clock<'a> = Box<dyn FnMut() -> f64 + 'a>;

/// A callback that receives every step's report.
pub type OnStep<'a> = Box<dyn FnMut(&StepReport) + 'a>;

/// The default clock: `Instant` natively, `Date.now()` in wasm (where `Instant` panics).
pub fn default_clock() -> Clock<'static> {
    #[cfg(target_arch = "wasm32")]
    {
        Box::new(js_sys::Date::now)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let t0 = std::time::Instant::now();
        Box::new(move || t0.elapsed().as_secs_f64() * 1e3)
    }
}

pub struct Run<'g> {
    /// The trainer: its `step` is the run's optimizer step and schedule position.
    pub trainer: Trainer<'g>,
    pub(super) cfg: RunConfig,
    pub(super) train: Vec<Example>,
    valid: Vec<Example>,
    pub(super) state: RunState,
    /// The current epoch's data order, and the RNG after drawing it.
    order: Vec<usize>,
    rng: Rng,
    clock: Clock<'g>,
    on_step: Option<OnStep<'g>>,
    /// Entries a checkpoint carries beside the run's own (the session's `settings`).
    pub(super) extra_meta: Vec<(String, Value)>,
}

impl<'g> Run<'g> {
    /// A run over `train` (validation on `valid`, which may be empty) from the trainer's
    /// current parameters. The trainer's loss mode, micro-batch and AdamW settings are
    /// replaced by the run's.
    pub fn new(mut trainer: Trainer<'g>, cfg: RunConfig, train: Vec<Example>, valid: Vec<Example>) -> Result<Self> {
        cfg.check()?;
        if train.is_empty() {
            return Err(Error::Data("the training set is empty".into()));
        }
        trainer.cfg.loss = cfg.loss;
        trainer.cfg.micro_batch = cfg.micro();
        trainer.cfg.adamw = cfg.adamw;
        let mut run = Run {
            trainer,
            state: RunState { epoch: 0, position: 0, epoch_rng: cfg.seed, tokens: 0 },
            cfg,
            train,
            valid,
            order: Vec::new(),
            rng: Rng::new(0),
            clock: default_clock(),
            on_step: None,
            extra_meta: Vec::new(),
        };
        run.draw_order();
        Ok(run)
    }

    /// Time steps with `now_ms` (milliseconds from any origin) instead of the default clock.
    pub fn with_clock(mut self, now_ms: impl FnMut() -> f64 + 'g) -> Self {
        self.clock = Box::new(now_ms);
        self
    }

    /// Save `value` under `key` in every checkpoint's metadata (beside `run`, `state`).
    pub fn with_meta(mut self, key: &str, value: Value) -> Self {
        self.extra_meta.push((key.to_string(), value));
        self
    }

    /// Call `f` after every step with its report.
    pub fn on_step(mut self, f: impl FnMut(&StepReport) + 'g) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    /// End the run, handing back the trainer (and with it the model as trained so far).
    pub fn into_trainer(self) -> Trainer<'g> {
        self.trainer
    }

    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn total_steps(&self) -> u64 {
        self.cfg.total_steps(self.train.len())
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            kind: self.cfg.schedule,
            base_lr: self.cfg.adamw.lr as f64,
            warmup: self.cfg.warmup,
            total: self.total_steps(),
        }
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.trainer.step
    }

    pub fn is_done(&self) -> bool {
        self.trainer.step >= self.total_steps()
    }

    /// Epochs done, fractional.
    pub fn epoch(&self) -> f64 {
        self.state.epoch as f64 + self.state.position as f64 / self.train.len() as f64
    }

    /// The current epoch's order of training examples (indices into the training set).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Draw the current epoch's order from `state.epoch_rng`.
    pub(super) fn draw_order(&mut self) {
        let n = self.train.len();
        self.rng = Rng::new(self.state.epoch_rng);
        self.order = (0..n).collect();
        if self.cfg.shuffle {
            // Fisher-Yates.
            for i in (1..n).rev() {
                let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
        }
    }

    /// One optimizer step on the next batch of the data order, then validation if due.
    /// `None` once the run is complete. On an error (e.g. a non-finite loss) nothing
    /// advances: the parameters, the step and the data position stay as they were.
    pub async fn next_step(&mut self) -> Result<Option<StepReport>> {
        if self.is_done() {
            return Ok(None);
        }
        if self.state.position >= self.train.len() {
            self.state.epoch += 1;
            self.state.position = 0;
            self.state.epoch_rng = self.rng.0;
            self.draw_order();
        }
        let start = self.state.position;
        let end = (start + self.cfg.batch).min(self.train.len());
        let batch: Vec<Example> = self.order[start..end].iter().map(|&i| self.train[i].clone()).collect();
        let sched = self.schedule();
        let lr = sched.lr(self.trainer.step);
        self.trainer.cfg.adamw.lr = lr as f32;
        let t0 = (self.clock)();
        let stats = self.trainer.step(&batch).await?;
        let ms = (self.clock)() - t0;
        self.state.position = end;
        self.state.tokens += stats.tokens as u64;
        let step = self.trainer.step;
        let due = (self.cfg.eval_every > 0 && step.is_multiple_of(self.cfg.eval_every)) || step >= sched.total;
        let valid_loss = if due && !self.valid.is_empty() { Some(self.validate().await?) } else { None };
        let report = StepReport {
            step,
            total_steps: sched.total,
            epoch: self.epoch(),
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            examples: batch.len(),
            tokens: stats.tokens,
            targets: stats.targets,
            ms,
            tokens_per_s: if ms > 0.0 { stats.tokens as f64 / (ms / 1e3) } else { 0.0 },
            valid_loss,
        };
        if let Some(f) = self.on_step.as_mut() {
            f(&report);
        }
        Ok(Some(report))
    }

    /// Run the remaining steps.
    pub async fn run_to_end(&mut self) -> Result<Vec<StepReport>> {
        let mut out = Vec::new();
        while let Some(r) = self.next_step().await? {
            out.push(r);
        }
        Ok(out)
    }

    /// The loss over the validation set under the run's loss mode (parameters unchanged).
    pub async fn validate(&mut self) -> Result<f64> {
        if self.valid.is_empty() {
            return Err(Error::Data("there is no validation set".into()));
        }
        let (_, loss) = self.trainer.score(&self.valid, self.cfg.loss).await?;
        Ok(loss)
    }

    /// A fingerprint of the training set (token ids, trained masks, order), so a
    /// checkpoint resumed on other data is noticed.
    pub fn data_fingerprint(&self) -> u64 {
        fingerprint(&self.train)
    }
}

/// FNV-1a over the examples' lengths, ids and trained masks.
pub fn fingerprint(examples: &[Example]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    eat(examples.len() as u64);
    for e in examples {
        eat(e.ids.len() as u64);
        for (&id, &t) in e.ids.iter().zip(&e.trained) {
            eat(id as u64 | (t as u64) << 32);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(i: u32) -> Example {
        Example::prompt_answer(vec![i, i + 1, i + 2], 1, format!("t:{i}"))
    }

    #[test]
    fn config_json_round_trips() {
        let c = RunConfig {
            micro_batch: Some(3),
            length: Length::Steps(17),
            seed: u64::MAX - 5,
            schedule: ScheduleKind::Cosine,
            ..Default::default()
        };
        let back = RunConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back.to_json(), c.to_json());
        assert_eq!(back.seed, u64::MAX - 5);
        assert_eq!(back.length, Length::Steps(17));
    }

    #[test]
    fn steps_micro_batches_and_checks() {
        let c = RunConfig { batch: 10, grad_accum: 3, length: Length::Epochs(2), ..Default::default() };
        assert_eq!(c.micro(), 4);
        assert_eq!(c.total_steps(25), 6);
        assert_eq!(RunConfig { micro_batch: Some(2), ..c.clone() }.micro(), 2);
        assert!(RunConfig { grad_accum: 11, ..c.clone() }.check().is_err());
        assert!(RunConfig { length: Length::Steps(0), ..c }.check().is_err());
    }

    #[test]
    fn fingerprint_sees_ids_and_masks() {
        let a: Vec<Example> = (0..3).map(ex).collect();
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b[1].trained[2] = false;
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
