//! Text generation: incremental decoding with a KV cache on the GPU, and sampling on the
//! host.
//!
//! A [`Decoder`] keeps, per layer, K and V caches of `capacity` positions per sequence
//! (B, S, Hk*D). Each forward takes new tokens (the prompt, in chunks of at most the
//! prefill chunk, see `set_prefill_chunk`, then one token at a time) through the same
//! blocks as training (`block_fwd`, so adapters inside the projections apply here too);
//! only the attention core differs (`Attend::Cached`): the new tokens' K/V go into the
//! cache at their positions and their queries attend to the cached keys up to their own
//! position. Only each sequence's last new token goes through the final norm and the LM
//! head. Per decoded token the host writes the token id and its position (a few bytes)
//! and reads back the (B, V) logits into a kept staging buffer; every GPU buffer is
//! allocated when the decoder is built, and the kernels' uniform parameters do not change
//! from one token to the next (positions live in a storage buffer), so decoding
//! allocates nothing on the GPU.
//!
//! [`Sampler`] picks the next token from the logits: greedy, temperature, top-k, top-p,
//! reproducible from a seed. [`generate`] puts the two together with stop ids, a token
//! limit and a streaming callback.

use super::config::Arch;
use super::pass::Attend;
use super::workspace::{softcap, LayerActs, LoraActs, PostNormActs, QkNormActs};
use super::{LoraIo, Model};
use crate::error::{Error, Result};
use crate::gpu::{Encoder, Gpu, ReadBuffer, Tensor};
use crate::ops::attention::CacheShape;
use crate::ops::gather;
use crate::rng::Rng;

/// Tokens per sequence one prefill forward takes at most (the activation buffers hold
/// B * this many rows).
pub const DEFAULT_PREFILL_CHUNK: usize = 128;

/// Activations of one forward over B * T new rows (T <= the prefill chunk).
struct Scratch {
    rows: usize,
    /// u32 (rows): token ids and positions of the new rows, laid out (B, T).
    ids: Tensor,
    pos: Tensor,
    /// u32 (B): the row of each sequence's last new token.
    last: Tensor,
    /// (rows, C): the residual stream entering a block and leaving it (`block_fwd` writes
    /// its output over its input).
    x: Tensor,
    /// One block's activations, as training's blocks save them. Nothing is kept for a
    /// backward, so both norms share one output buffer and one pair of statistics (ln2,
    /// mean2 and rstd2 are views of ln1, mean1 and rstd1), and the cached attention keeps no
    /// log-sum-exp (`lse` is a one-element placeholder no kernel binds).
    acts: LayerActs,
    /// (B, C) last rows, normed; (B) norm statistics; (B, V) logits.
    hg: Tensor,
    hf: Tensor,
    meanf: Tensor,
    rstdf: Tensor,
    logits: Tensor,
    /// (B, V) the logits before Gemma 3's final soft-cap, when the config sets one.
    zcap: Option<Tensor>,
    /// LoRA's (rows, R) buffers when the model has adapters (no dropout in generation).
    lora: Option<LoraActs>,
}

impl Scratch {
    fn new(gpu: &Gpu, model: &Model, batch: usize, chunk: usize) -> Result<Scratch> {
        let cfg = &model.cfg;
        let rows = batch * chunk;
        let (c, f, qd, kd) = (cfg.hidden, cfg.ffn, cfg.q_dim(), cfg.kv_dim());
        let gpt2 = cfg.arch == Arch::Gpt2;
        let biggest = [rows * f, rows * 3 * c, rows * qd, batch * cfg.vocab].into_iter().max().unwrap() as u64 * 4;
        gpu.check_fits(&format!("decoder activations of {rows} rows"), biggest)?;
        let z = |label: &str, len: usize| gpu.zeros(label, len);
        let (ln, mean, rstd) = (z("gen.ln", rows * c)?, z("gen.mean", rows)?, z("gen.rstd", rows)?);
        let acts = LayerActs {
            ln1: ln.clone(),
            mean1: mean.clone(),
            rstd1: rstd.clone(),
            qkv: if gpt2 { Some(z("gen.qkv", rows * 3 * c)?) } else { None },
            qk_norm: if cfg.qk_norm {
                Some(QkNormActs {
                    q_raw: z("gen.q_raw", rows * qd)?,
                    k_raw: z("gen.k_raw", rows * kd)?,
                    rstd_q: z("gen.rstd_q", rows * cfg.heads)?,
                    rstd_k: z("gen.rstd_k", rows * cfg.kv_heads)?,
                })
            } else {
                None
            },
            q: z("gen.q", rows * qd)?,
            k: z("gen.k", rows * kd)?,
            v: z("gen.v", rows * kd)?,
            o: z("gen.o", rows * qd)?,
            lse: z("gen.lse", 1)?,
            x_mid: z("gen.x_mid", rows * c)?,
            ln2: ln,
            mean2: mean,
            rstd2: rstd,
            h1: z("gen.h1", rows * f)?,
            h2: if gpt2 { None } else { Some(z("gen.h2", rows * f)?) },
            act: z("gen.act", rows * f)?,
            post: if cfg.arch == Arch::Gemma3 {
                Some(PostNormActs {
                    attn_out: z("gen.attn_out", rows * c)?,
                    rstd_attn: z("gen.rstd_attn", rows)?,
                    mlp_out: z("gen.mlp_out", rows * c)?,
                    rstd_mlp: z("gen.rstd_mlp", rows)?,
                })
            } else {
                None
            },
        };
        Ok(Scratch {
            lora: model.lora_shape().map(|l| LoraActs::new(gpu, &l, rows)).transpose()?,
            rows,
            ids: z("gen.ids", rows)?,
            pos: z("gen.pos", rows)?,
            last: z("gen.last", batch)?,
            x: z("gen.x", rows * c)?,
            acts,
            hg: z("gen.hg", batch * c)?,
            hf: z("gen.hf", batch * c)?,
            meanf: z("gen.meanf", batch)?,
            rstdf: z("gen.rstdf", batch)?,
            logits: z("gen.logits", batch * cfg.vocab)?,
            zcap: if softcap(cfg).is_some() { Some(z("gen.zcap", batch * cfg.vocab)?) } else { None },
        })
    }
}

/// The cached attention's shape for `t` new rows of `b` sequences: block `blk`'s window
/// and score scale (None: the model's widest, for validation).
fn cache_shape(model: &Model, b: usize, t: usize, cap: usize, blk: Option<&super::arch::BlockP>) -> CacheShape {
    let cfg = &model.cfg;
    let (window, scale) = match blk {
        Some(blk) => model.attn_window_scale(blk),
        None => (None, cfg.gemma.as_ref().map(|g| g.attn_scale)),
    };
    CacheShape { b, t, h: cfg.heads, hk: cfg.kv_heads, d: cfg.head_dim, cap, window, scale }
}

/// Incremental decoding of B sequences with a KV cache on the GPU. Borrow the model of a
/// `Trainer` (`&trainer.model`) to generate with the weights being trained.
pub struct Decoder<'a> {
    gpu: &'a Gpu,
    model: &'a Model,
    batch: usize,
    capacity: usize,
    chunk: usize,
    /// Tokens in the cache, per sequence (all sequences advance together).
    len: usize,
    /// Per layer, (B, S, Hk*D).
    k_cache: Vec<Tensor>,
    v_cache: Vec<Tensor>,
    scratch: Scratch,
    readback: ReadBuffer,
}

impl<'a> Decoder<'a> {
    /// A decoder for `batch` sequences of at most `capacity` tokens each (prompt and
    /// generated tokens together), which must not exceed the model's positions.
    pub fn new(gpu: &'a Gpu, model: &'a Model, batch: usize, capacity: usize) -> Result<Decoder<'a>> {
        let cfg = &model.cfg;
        if capacity > model.max_seq() {
            return Err(Error::TooLong {
                what: "the decoder's cache".into(),
                tokens: capacity,
                max: model.max_seq(),
                limit: "the model's positions",
            });
        }
        let chunk = DEFAULT_PREFILL_CHUNK.min(capacity.max(1));
        cache_shape(model, batch, chunk, capacity, None).validate()?;
        let cache_len = batch * capacity * cfg.kv_dim();
        gpu.check_fits(&format!("a KV cache of {batch} x {capacity} positions"), cache_len as u64 * 4)?;
        let mut k_cache = Vec::with_capacity(cfg.layers);
        let mut v_cache = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            k_cache.push(gpu.zeros("k_cache", cache_len)?);
            v_cache.push(gpu.zeros("v_cache", cache_len)?);
        }
        Ok(Decoder {
            gpu,
            model,
            batch,
            capacity,
            chunk,
            len: 0,
            k_cache,
            v_cache,
            scratch: Scratch::new(gpu, model, batch, chunk)?,
            readback: ReadBuffer::new(gpu, batch * cfg.vocab),
        })
    }

    /// Process prompts in forwards of at most `chunk` tokens per sequence (reallocates
    /// the activation buffers when it changes).
    pub fn set_prefill_chunk(&mut self, chunk: usize) -> Result<()> {
        let chunk = chunk.clamp(1, self.capacity.max(1));
        if chunk != self.chunk {
            cache_shape(self.model, self.batch, chunk, self.capacity, None).validate()?;
            self.scratch = Scratch::new(self.gpu, self.model, self.batch, chunk)?;
            self.chunk = chunk;
        }
        Ok(())
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens in the cache (per sequence).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget the cached tokens (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Append `tokens[b]` to sequence b (the same number for every sequence, at least one)
    /// and return the logits (B, V) that follow each sequence's last token.
    pub async fn feed(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        let cfg = &self.model.cfg;
        if tokens.len() != self.batch {
            return Err(Error::Usage(format!("the decoder holds {} sequences, got {}", self.batch, tokens.len())));
        }
        let t = tokens[0].len();
        if t == 0 || tokens.iter().any(|s| s.len() != t) {
            return Err(Error::Data("every sequence needs the same number (at least one) of new tokens".into()));
        }
        if let Some(&bad) = tokens.iter().flat_map(|s| s.iter()).find(|&&id| id as usize >= cfg.vocab) {
            return Err(Error::Data(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
        }
        if self.len + t > self.capacity {
            return Err(Error::TooLong {
                what: "the sequence".into(),
                tokens: self.len + t,
                max: self.capacity,
                limit: "the decoder's cache",
            });
        }
        // WebGPU drops an invalid dispatch and only logs it: surface it as an error.
        let scope = self.gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut c0 = 0;
        while c0 < t {
            let tc = self.chunk.min(t - c0);
            let start = self.len + c0;
            let (mut ids, mut pos) = (Vec::with_capacity(self.batch * tc), Vec::with_capacity(self.batch * tc));
            for s in tokens {
                ids.extend_from_slice(&s[c0..c0 + tc]);
                pos.extend((start..start + tc).map(|p| p as u32));
            }
            let head = c0 + tc == t;
            let s = &self.scratch;
            self.gpu.write_u32(&s.ids, &ids);
            self.gpu.write_u32(&s.pos, &pos);
            if head && tc > 1 {
                let last: Vec<u32> = (0..self.batch).map(|b| (b * tc + tc - 1) as u32).collect();
                self.gpu.write_u32(&s.last, &last);
            }
            // (row, key) pairs the new rows see, for the profile's cost.
            let visible = self.batch * (tc * start + tc * (tc + 1) / 2);
            let mut enc = Encoder::new(self.gpu);
            self.encode(&mut enc, tc, visible, head);
            // The next chunk's uploads must not overtake this chunk's commands.
            enc.submit();
            c0 += tc;
        }
        self.len += t;
        let logits = self.readback.read_f32(self.gpu, &self.scratch.logits.view(0, self.batch * cfg.vocab)).await;
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(format!("a kernel was rejected by the GPU ({e}); the logits are invalid")));
        }
        logits
    }

    /// Record one forward over B * `t` new rows (ids and positions already uploaded):
    /// training's embedding and blocks (`block_fwd`), with the cached attention in each
    /// block, then the final norm and the LM head over each sequence's last new row.
    fn encode(&self, enc: &mut Encoder, t: usize, visible: usize, head: bool) {
        let (m, s) = (self.model, &self.scratch);
        let cfg = &m.cfg;
        let (b, c) = (self.batch, cfg.hidden);
        let rows = b * t;
        debug_assert!(rows <= s.rows);
        m.embed_fwd(enc, rows, &s.ids, &s.pos, &s.x);
        let lio = s.lora.as_ref().map(|acts| LoraIo { acts, salt: None, u_ready: false });
        for (l, blk) in m.tree.blocks.iter().enumerate() {
            // Gemma 3's local layers keep every position in their cache, but each query
            // sees only the window (the decode kernel's mask, as in training).
            let shape = cache_shape(m, b, t, self.capacity, Some(blk));
            let (k_cache, v_cache) = (&self.k_cache[l], &self.v_cache[l]);
            let attend = Attend::Cached { shape: &shape, k_cache, v_cache, visible };
            m.block_fwd(enc, blk, rows, &s.x, &s.acts, &s.x, &s.pos, &attend, lio);
        }
        if !head {
            return;
        }
        let last = if t == 1 {
            &s.x
        } else {
            gather::forward(enc, &s.x, &s.last, &s.hg, b, c);
            &s.hg
        };
        m.norm_fwd(enc, &m.tree.ln_f, b, last, &s.hf, &s.meanf, &s.rstdf);
        m.lm_head_fwd(enc, b, &s.hf, s.zcap.as_ref(), &s.logits);
    }

    /// Generate from `prompt` with sequence 0 of this decoder (B = 1), starting from an
    /// empty cache; see [`generate`].
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        cfg: &GenerateConfig,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        if self.batch != 1 {
            return Err(Error::Usage(format!("generate runs one sequence; this decoder holds {}", self.batch)));
        }
        if prompt.is_empty() {
            return Err(Error::Data("the prompt is empty: generation needs at least one token".into()));
        }
        check_prompt(self.model, prompt.len())?;
        if prompt.len() > self.capacity {
            return Err(Error::TooLong {
                what: "the prompt".into(),
                tokens: prompt.len(),
                max: self.capacity,
                limit: "the decoder's cache",
            });
        }
        let stop_ids: Vec<u32> = cfg.stop_ids.iter().chain(&self.model.cfg.eos_token_ids).copied().collect();
        let mut sampler = Sampler::new(cfg.sampling.clone());
        let mut tokens = Vec::new();
        self.reset();
        if cfg.max_new_tokens == 0 {
            return Ok(Generation { tokens, stop: StopReason::MaxTokens });
        }
        let mut logits = self.feed(&[prompt]).await?;
        loop {
            let tok = sampler.sample(&logits)?;
            tokens.push(tok);
            let go_on = on_token(tok);
            let stop = if stop_ids.contains(&tok) {
                Some(StopReason::Stop(tok))
            } else if !go_on {
                Some(StopReason::Callback)
            } else if tokens.len() >= cfg.max_new_tokens {
                Some(StopReason::MaxTokens)
            } else if self.len >= self.capacity {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            if let Some(stop) = stop {
                return Ok(Generation { tokens, stop });
            }
            logits = self.feed(&[&[tok]]).await?;
        }
    }
}

fn check_prompt(model: &Model, len: usize) -> Result<()> {
    if len > model.max_seq() {
        return Err(Error::TooLong {
            what: "the prompt".into(),
            tokens: len,
            max: model.max_seq(),
            limit: "the model's positions",
        });
    }
    Ok(())
}

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 (or less): greedy, the most likely token. Otherwise the logits are divided by it
    /// before the softmax: below 1 sharper, above 1 flatter.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all;
    /// the most likely token is always kept).
    pub top_p: f32,
    /// The same seed, logits and settings give the same tokens, natively and in wasm.
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::greedy()
    }
}

/// Picks tokens from logits on the host (one row of V floats per token).
pub struct Sampler {
    pub cfg: Sampling,
    rng: Rng,
    order: Vec<u32>,
    probs: Vec<f64>,
}

impl Sampler {
    pub fn new(cfg: Sampling) -> Sampler {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng, order: Vec::new(), probs: Vec::new() }
    }

    /// The next token from `logits` (V). Ties go to the lower id. NaN logits are an error.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Usage("sampling from empty logits".into()));
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan()) {
            return Err(Error::Gpu(format!("the logits are NaN (token id {i}): the model's weights are not finite")));
        }
        let c = &self.cfg;
        if c.temperature <= 0.0 || c.top_k == 1 {
            return Ok(argmax(logits));
        }
        // Most likely first; ties to the lower id, so the order is a pure function of the
        // logits.
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        self.order.clear();
        self.order.extend(0..logits.len() as u32);
        let k = if c.top_k == 0 { logits.len() } else { c.top_k.min(logits.len()) };
        if k < logits.len() {
            self.order.select_nth_unstable_by(k - 1, by_logit);
            self.order.truncate(k);
        }
        self.order.sort_unstable_by(by_logit);
        let top = logits[self.order[0] as usize] as f64;
        let t = c.temperature as f64;
        self.probs.clear();
        self.probs.extend(self.order.iter().map(|&i| ((logits[i as usize] as f64 - top) / t).exp()));
        let total: f64 = self.probs.iter().sum();
        // top-p: the shortest prefix whose mass reaches p.
        let mut keep = self.probs.len();
        if (c.top_p as f64) < 1.0 {
            let want = c.top_p as f64 * total;
            let mut cum = 0.0;
            keep = 1;
            for (i, p) in self.probs.iter().enumerate() {
                cum += p;
                keep = i + 1;
                if cum >= want {
                    break;
                }
            }
        }
        let mass: f64 = self.probs[..keep].iter().sum();
        let mut u = self.rng.uniform() * mass;
        for i in 0..keep {
            u -= self.probs[i];
            if u < 0.0 {
                return Ok(self.order[i]);
            }
        }
        Ok(self.order[keep - 1])
    }
}

/// The id of the largest logit (the lowest id among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Tokens to generate at most (the stop token included).
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Ids that end generation (end-of-turn tokens, ...), in addition to the model
    /// config's `eos_token_id`s. The stop token is returned and streamed.
    pub stop_ids: Vec<u32>,
    /// Positions the KV cache holds (prompt + generated); by default just enough for the
    /// prompt and `max_new_tokens`, within the model's positions.
    pub capacity: Option<usize>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { max_new_tokens: 64, sampling: Sampling::greedy(), stop_ids: Vec::new(), capacity: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (EOS, end of turn) was generated; it is the last token.
    Stop(u32),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The callback returned false.
    Callback,
    /// The cache (or the model's positions) is full.
    ContextFull,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The generated tokens (not the prompt).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// Generate up to `cfg.max_new_tokens` tokens after `prompt`, streaming each id to
/// `on_token` as it comes (return false to stop). A prompt longer than the model's
/// positions (or the configured cache) is an `Error::TooLong`.
pub async fn generate(
    gpu: &Gpu,
    model: &Model,
    prompt: &[u32],
    cfg: &GenerateConfig,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    check_prompt(model, prompt.len())?;
    let capacity = cfg.capacity.unwrap_or((prompt.len() + cfg.max_new_tokens).min(model.max_seq())).max(1);
    let mut dec = Decoder::new(gpu, model, 1, capacity)?;
    dec.generate(prompt, cfg, on_token).await
}
