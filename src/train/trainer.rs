//! The training step: zero the gradients, forward + backward every micro-batch of the
//! accumulated batch, clip by the global norm and apply AdamW, all on the GPU with one
//! readback (the loss and the norm) after the step.

use super::batch::{self, Example, ExampleScore, LossMode, MicroBatch};
use crate::error::{Error, Result};
use crate::gpu::{Encoder, Gpu, Profile, ReadBuffer, Tensor};
use crate::model::{Head, Inputs, Model, Workspace, WorkspaceOpts, HEAD_CHUNK};
use crate::ops::adamw::{self, AdamW};
use crate::ops::embedding::GroupIndex;
use crate::ops::grad_norm;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub loss: LossMode,
    /// Examples per micro-batch; the batch handed to `step` is accumulated over them.
    pub micro_batch: usize,
    pub adamw: AdamW,
    /// Pack each micro-batch's examples into rows of up to this many tokens (0: one
    /// example per row, padded to the longest).
    pub pack: usize,
    /// Activation checkpointing: save each block's input only and re-run the block's
    /// forward in the backward (`WorkspaceOpts::recompute`); off saves every activation.
    /// The results are the same bits either way.
    pub recompute: bool,
    /// Loss rows per chunk of the LM head (a positive multiple of 64; `HEAD_CHUNK`).
    pub head_chunk: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            loss: LossMode::PerExample,
            micro_batch: 8,
            adamw: AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 },
            pack: 0,
            recompute: true,
            head_chunk: HEAD_CHUNK,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StepStats {
    /// The loss of the batch before the update, in the configured normalization.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens processed (padding excluded), and tokens that carried loss.
    pub tokens: usize,
    pub targets: usize,
}

pub struct Trainer<'g> {
    gpu: &'g Gpu,
    pub model: Model,
    pub cfg: TrainConfig,
    /// Optimizer steps applied so far.
    pub step: u64,
    ws: Option<Workspace>,
    partials: Tensor,
    /// f32 (4): [global grad norm, ...]
    stats: Tensor,
    /// When set, every dispatch is timed alone into this profile (benchmarks only).
    pub profile: Option<Profile>,
    /// (tokens, loss rows) of the last batch run.
    last_tokens: (usize, usize),
    /// ids, pos, seg (rows) and loss_rows, targets, weights (loss rows), sized with the
    /// workspace for its largest micro-batch and written each micro-batch.
    inputs: Option<[Tensor; 6]>,
    /// The rows grouped by token id and by position (the embeddings' backward), sized and
    /// written like `inputs`.
    groups: Option<[GroupIndex; 2]>,
    /// AdamW's per-step scalars, written each step.
    sched: adamw::Schedule,
    /// u32 (micro-batches) LoRA dropout's salt of each micro-batch, written each step and
    /// grown when a batch has more micro-batches.
    salts: Tensor,
    /// `Encoder::submit_every` of the micro-batches' encoders.
    pub submit_every: u64,
    /// The step's readback buffer (`STATS` + loss rows) and its host-mappable twin, kept
    /// across steps and grown when a batch has more loss rows.
    out: Option<(Tensor, ReadBuffer)>,
    /// Forgets the bind groups this trainer's encoders cached, when it is dropped.
    _binds: BindCache<'g>,
}

/// The trainer's encoders cache bind groups on its persistent buffers (workspace, inputs,
/// parameters); those entries go when the buffers do (`Gpu::forget_bind_groups`).
struct BindCache<'g>(&'g Gpu);

impl Drop for BindCache<'_> {
    fn drop(&mut self) {
        self.0.forget_bind_groups();
    }
}

impl<'g> Trainer<'g> {
    pub fn new(gpu: &'g Gpu, model: Model, cfg: TrainConfig) -> Result<Self> {
        let lens: Vec<usize> = model.params.arenas.iter().filter(|a| a.trainable).map(|a| a.len).collect();
        let partials = gpu.zeros("grad_norm_partials", grad_norm::partials_len(&lens).max(1))?;
        let stats = gpu.zeros("stats", 4)?;
        Ok(Trainer {
            gpu,
            model,
            cfg,
            step: 0,
            ws: None,
            partials,
            stats,
            profile: None,
            last_tokens: (0, 0),
            inputs: None,
            groups: None,
            sched: adamw::Schedule::new(gpu)?,
            salts: gpu.zeros("dropout_salts", 1)?,
            submit_every: submit_every(),
            out: None,
            _binds: BindCache(gpu),
        })
    }

    /// The model, its gradient buffers and workspace released.
    pub fn into_model(self) -> Model {
        self.model
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    pub fn workspace(&self) -> Option<&Workspace> {
        self.ws.as_ref()
    }

    /// The logits (N, V) of the rows `mb.loss_rows` (N rows in row order).
    pub async fn logits(&mut self, mb: &MicroBatch) -> Result<Vec<f32>> {
        self.ensure_workspace_for(std::slice::from_ref(mb), true)?;
        let inp = self.upload(mb, false)?;
        let ws = self.ws.as_ref().unwrap();
        {
            let mut enc = Encoder::new(self.gpu);
            self.model.forward(&mut enc, ws, &inp, Head::Logits);
            enc.submit();
        }
        self.gpu.read_f32(&ws.logits.view(0, inp.n * self.model.cfg.vocab)).await
    }

    fn check_lengths(&self, examples: &[Example]) -> Result<()> {
        let max = self.model.max_seq();
        for e in examples {
            if e.ids.len() > max {
                return Err(Error::Data(format!(
                    "{}: {} tokens exceed the model's maximum of {max} positions",
                    e.origin,
                    e.ids.len()
                )));
            }
            if let Some(&bad) = e.ids.iter().find(|&&id| id as usize >= self.model.cfg.vocab) {
                return Err(Error::Data(format!(
                    "{}: token id {bad} is outside the vocabulary of {}",
                    e.origin, self.model.cfg.vocab
                )));
            }
        }
        Ok(())
    }

    /// The layout of the workspaces this trainer allocates (`all_logits` for `logits`).
    pub fn workspace_opts(&self, all_logits: bool) -> WorkspaceOpts {
        WorkspaceOpts { recompute: self.cfg.recompute, all_logits, head_chunk: self.cfg.head_chunk }
    }

    /// Make sure a workspace fits the largest micro-batch, refusing before allocation when
    /// one activation buffer would exceed the adapter's binding limit.
    pub fn ensure_workspace(&mut self, batches: &[MicroBatch]) -> Result<()> {
        self.ensure_workspace_for(batches, false)
    }

    /// `ensure_workspace`, with the logits of every loss row held when `all_logits`.
    fn ensure_workspace_for(&mut self, batches: &[MicroBatch], all_logits: bool) -> Result<()> {
        let rows = batches.iter().map(|m| m.b * m.t).max().unwrap_or(1);
        let n = batches.iter().map(|m| m.loss_rows.len()).max().unwrap_or(1);
        let opts = self.workspace_opts(all_logits);
        let layout_ok = |w: &Workspace| {
            w.opts.recompute == opts.recompute
                && w.opts.head_chunk == opts.head_chunk
                && (w.opts.all_logits || !all_logits)
        };
        if self.ws.as_ref().is_some_and(|w| w.fits(rows, n) && layout_ok(w)) && !self.gpu.no_reuse {
            return Ok(());
        }
        let cfg = &self.model.cfg;
        let logit_rows = if all_logits { n } else { n.min(crate::model::head_rows(opts.head_chunk, cfg.vocab)) };
        let biggest = crate::model::memory::largest_buffer(cfg, rows, logit_rows);
        self.gpu.check_fits(&format!("activations of a micro-batch of {rows} tokens"), biggest)?;
        self.ws = None;
        self.inputs = None;
        self.groups = None;
        self.gpu.forget_bind_groups();
        self.ws = Some(self.model.workspace_with(self.gpu, rows, n, opts)?);
        let g = self.gpu;
        let (r, n) = (self.ws.as_ref().unwrap().rows, self.ws.as_ref().unwrap().n);
        self.inputs = Some([
            g.zeros("ids", r)?,
            g.zeros("pos", r)?,
            g.zeros("seg", r)?,
            g.zeros("loss_rows", n)?,
            g.zeros("targets", n)?,
            g.zeros("weights", n)?,
        ]);
        self.groups = Some([GroupIndex::new(g, r)?, GroupIndex::new(g, r)?]);
        Ok(())
    }

    pub fn upload(&self, mb: &MicroBatch, with_grads: bool) -> Result<Inputs> {
        let g = self.gpu;
        let tree = &self.model.tree;
        let p = &self.model.params;
        let wte_trainable = p.grad(tree.wte).is_some();
        let wpe_trainable = tree.wpe.is_some_and(|w| p.grad(w).is_some());
        Ok(Inputs {
            b: mb.b,
            t: mb.t,
            n: mb.loss_rows.len(),
            ids: g.upload_u32("ids", &mb.ids)?,
            pos: g.upload_u32("pos", &mb.pos)?,
            seg: g.upload_u32("seg", &mb.seg)?,
            loss_rows: g.upload_u32("loss_rows", &mb.loss_rows)?,
            targets: g.upload_u32("targets", &mb.targets)?,
            weights: g.upload_f32("weights", &mb.weights)?,
            by_id: if with_grads && wte_trainable { Some(GroupIndex::build(g, &mb.ids)?) } else { None },
            by_pos: if with_grads && wpe_trainable { Some(GroupIndex::build(g, &mb.pos)?) } else { None },
            dropout_salt: None,
        })
    }

    /// `upload`, written into the trainer's persistent input buffers (ordered after the
    /// previous micro-batch's submit, before the next).
    fn write_inputs(&self, mb: &MicroBatch, with_grads: bool) -> Result<Inputs> {
        let g = self.gpu;
        let [ids, pos, seg, loss_rows, targets, weights] = self.inputs.as_ref().expect("inputs with the workspace");
        let (r, n) = (mb.ids.len(), mb.loss_rows.len());
        let put = |t: &Tensor, d: &[u32]| {
            g.write_u32(t, d);
            t.view(0, d.len())
        };
        let tree = &self.model.tree;
        let p = &self.model.params;
        let wte_trainable = p.grad(tree.wte).is_some();
        let wpe_trainable = tree.wpe.is_some_and(|w| p.grad(w).is_some());
        debug_assert!(mb.pos.len() == r && mb.seg.len() == r && mb.targets.len() == n && mb.weights.len() == n);
        g.write_f32(weights, &mb.weights);
        let [by_id, by_pos] = self.groups.as_ref().expect("group indexes with the workspace");
        Ok(Inputs {
            b: mb.b,
            t: mb.t,
            n,
            ids: put(ids, &mb.ids),
            pos: put(pos, &mb.pos),
            seg: put(seg, &mb.seg),
            loss_rows: put(loss_rows, &mb.loss_rows),
            targets: put(targets, &mb.targets),
            weights: weights.view(0, n),
            by_id: (with_grads && wte_trainable).then(|| by_id.write(g, &mb.ids)),
            by_pos: (with_grads && wpe_trainable).then(|| by_pos.write(g, &mb.pos)),
            dropout_salt: None,
        })
    }

    /// Encode and submit every micro-batch forward (and backward when `grads`), zeroing
    /// the gradients first; nothing is read back. Returns the plan and a buffer of
    /// `STATS + loss rows` elements whose rows hold each row's NLL, in plan order (the
    /// first `STATS` are left for the step's statistics, so one readback carries both).
    fn encode_run(&mut self, examples: &[Example], mode: LossMode, grads: bool) -> Result<(Vec<MicroBatch>, Tensor)> {
        self.check_lengths(examples)?;
        let batches = batch::plan_packed(examples, mode, self.cfg.micro_batch, self.cfg.pack)?;
        self.ensure_workspace(&batches)?;
        let total_n: usize = batches.iter().map(|m| m.loss_rows.len()).sum();
        self.last_tokens = (examples.iter().map(|e| e.ids.len()).sum(), total_n);
        if self.out.as_ref().is_none_or(|(t, _)| t.len < STATS + total_n) {
            let len = STATS + total_n;
            self.out = Some((self.gpu.zeros("nll_all", len)?, ReadBuffer::new(self.gpu, len)));
        }
        let nll_all = self.out.as_ref().unwrap().0.view(0, STATS + total_n);
        let gpu = self.gpu;
        let mut enc = Encoder::new(gpu);
        enc.cache_binds = true;
        enc.submit_every = self.submit_every;
        enc.profile = self.profile.take();
        if grads {
            for a in self.model.params.arenas.iter().filter(|a| a.trainable) {
                enc.clear(a.grads.as_ref().unwrap());
            }
        }
        if grads {
            // LoRA dropout: a fresh mask per optimizer step and micro-batch, its salt in a
            // buffer written here (before this step's first submit, after the last step's
            // last), so the dropout dispatches keep their parameters and bind groups.
            if self.salts.len < batches.len() {
                // The cached bind groups hold the old buffer: let them go with it.
                gpu.forget_bind_groups();
                self.salts = gpu.zeros("dropout_salts", batches.len())?;
            }
            let salts: Vec<u32> =
                (0..batches.len() as u32).map(|i| (self.step as u32).wrapping_mul(0x9E37_79B9) ^ i).collect();
            gpu.write_u32(&self.salts, &salts);
        }
        let ws = self.ws.as_ref().unwrap();
        let mut at = STATS;
        for (i, mb) in batches.iter().enumerate() {
            let mut inp = self.write_inputs(mb, grads)?;
            if grads {
                inp.dropout_salt = Some((self.salts.clone(), i as u32));
            }
            if grads {
                self.model.forward(&mut enc, ws, &inp, Head::Train);
                self.model.backward(&mut enc, ws, &inp);
            } else {
                self.model.forward(&mut enc, ws, &inp, Head::Loss);
            }
            enc.copy_at(&ws.nll.view(0, inp.n), &nll_all, at);
            at += inp.n;
            // The next micro-batch reuses the workspace: its uploads must not overtake this
            // one's commands, so submit now (no readback, no wait).
            enc.submit();
        }
        self.profile = enc.profile.take();
        drop(enc);
        Ok((batches, nll_all))
    }

    /// Run every micro-batch and read their per-row NLLs back (one readback).
    async fn run(
        &mut self,
        examples: &[Example],
        mode: LossMode,
        grads: bool,
    ) -> Result<(Vec<MicroBatch>, Vec<Vec<f32>>)> {
        let (batches, nll_all) = self.encode_run(examples, mode, grads)?;
        let flat = self.out.as_ref().unwrap().1.read_f32(self.gpu, &nll_all).await?;
        let nll = split_nll(&batches, &flat[STATS..]);
        Ok((batches, nll))
    }

    /// Per-example NLLs and the batch loss under `mode`, without touching the gradients.
    pub async fn score(&mut self, examples: &[Example], mode: LossMode) -> Result<(Vec<ExampleScore>, f64)> {
        let (batches, nll) = self.run(examples, mode, false).await?;
        Ok(batch::summarize(examples, &batches, &nll))
    }

    /// The gradient of the loss over `examples` (one accumulated batch), left in the
    /// gradient buffers; returns the loss.
    pub async fn accumulate(&mut self, examples: &[Example]) -> Result<f64> {
        let mode = self.cfg.loss;
        let (batches, nll) = self.run(examples, mode, true).await?;
        let (_, loss) = batch::summarize(examples, &batches, &nll);
        Ok(loss)
    }

    /// One optimizer step on `examples` (one accumulated batch). On a NaN or infinite loss
    /// or gradient the update is skipped on the GPU, the parameters and moments stay as
    /// they were, and an error says so.
    pub async fn step(&mut self, examples: &[Example]) -> Result<StepStats> {
        // WebGPU drops an invalid dispatch and only logs it: catch it and fail the step.
        let scope = self.gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let stats = self.step_inner(examples).await;
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(format!("a kernel was rejected by the GPU ({e}); the step's result is invalid")));
        }
        stats
    }

    async fn step_inner(&mut self, examples: &[Example]) -> Result<StepStats> {
        let mode = self.cfg.loss;
        let (batches, out) = self.encode_run(examples, mode, true)?;
        let gpu = self.gpu;
        let t = self.step + 1;
        let hp = self.cfg.adamw;
        self.sched.write(gpu, &hp, t);
        {
            let mut enc = Encoder::new(gpu);
            enc.cache_binds = true;
            enc.profile = self.profile.take();
            let grads: Vec<Tensor> =
                self.model.params.arenas.iter().filter(|a| a.trainable).map(|a| a.grads.clone().unwrap()).collect();
            grad_norm::grad_norm(&mut enc, &grads, &self.partials, &self.stats);
            for a in self.model.params.arenas.iter().filter(|a| a.trainable) {
                let (g, m, v) = (a.grads.as_ref().unwrap(), a.m.as_ref().unwrap(), a.v.as_ref().unwrap());
                adamw::step(&mut enc, &hp, &self.sched, &a.weights, g, m, v, &self.stats, a.len, a.decay);
            }
            // The norm beside the losses, so the step drains the GPU once, after the
            // optimizer is encoded.
            enc.copy_at(&self.stats, &out, 0);
            enc.submit();
            self.profile = enc.profile.take();
        }
        let flat = self.out.as_ref().unwrap().1.read_f32(gpu, &out).await?;
        let norm = flat[0];
        // The loss from the same readback: the f64 sum of w_i * nll_i on the host, the same
        // bits as `accumulate` (the non-finite guard on the update is AdamW's, on the GPU:
        // a non-finite loss gives a non-finite gradient, hence norm, and the step skips).
        let (_, loss) = batch::summarize(examples, &batches, &split_nll(&batches, &flat[STATS..]));
        if !norm.is_finite() || !loss.is_finite() {
            let what = if loss.is_finite() { format!("gradient (norm {norm})") } else { format!("loss ({loss})") };
            return Err(Error::NonFinite { what, step: t });
        }
        self.step = t;
        Ok(StepStats { loss, grad_norm: norm, tokens: self.last_tokens.0, targets: self.last_tokens.1 })
    }

    /// Every trainable parameter's current gradient, by HF name (for `grads` and tests).
    pub async fn read_grads(&self) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        let p = &self.model.params;
        let mut out = Vec::new();
        for (i, s) in p.specs.iter().enumerate() {
            if let Some(g) = p.read_grad(self.gpu, i).await? {
                out.push((s.name.clone(), s.shape.clone(), g));
            }
        }
        Ok(out)
    }
}

/// Dispatches per submit inside a micro-batch (a SmolLM2-135M block is about 100 in the
/// forward and backward together): the GPU starts on the first blocks while the CPU
/// encodes the rest, at a few dozen submits per step. `WEBTUNE_SUBMIT_EVERY=n` overrides
/// it (0: one submit per micro-batch), to measure the difference.
pub const SUBMIT_EVERY: u64 = 256;

fn submit_every() -> u64 {
    std::env::var("WEBTUNE_SUBMIT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(SUBMIT_EVERY)
}

/// Elements at the start of a step's readback buffer for the statistics (`stats`).
const STATS: usize = 4;

/// The flat per-row NLLs cut into one vector per micro-batch.
fn split_nll(batches: &[MicroBatch], flat: &[f32]) -> Vec<Vec<f32>> {
    let mut nll = Vec::new();
    let mut at = 0;
    for mb in batches {
        nll.push(flat[at..at + mb.loss_rows.len()].to_vec());
        at += mb.loss_rows.len();
    }
    nll
}
