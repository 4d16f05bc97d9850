//! Parameters, their gradients and optimizer moments, packed into a few large "arena"
//! buffers. One arena is one binding, so gradient clipping and AdamW are a handful of
//! dispatches instead of one per tensor, and a checkpoint is a few contiguous copies.
//! Frozen parameters live in arenas of their own and get no gradient or moment storage.
//! A frozen matrix may instead stay compact (GGUF blocks or f16/bf16, src/load/compact.rs's
//! layout) in u32 "compact arenas", read through the in-kernel dequantizers.

use std::collections::HashMap;

pub use super::spec::{ParamSpec, Pid};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::load::compact::{CompactFormat, CompactTensor};
use crate::ops::dequant::CompactWeight;

/// Elements per alignment unit: 64 f32 = 256 bytes, WebGPU's storage offset alignment.
const ALIGN: usize = 64;

/// Where a parameter sits: arena `arena`, elements `[offset, offset + numel)`. A compact
/// parameter is in no f32 arena (`arena` is `usize::MAX`); see `ParamStore::compact`.
#[derive(Clone, Debug)]
pub struct Slot {
    pub arena: usize,
    pub offset: usize,
}

/// One arena: a buffer of parameters that share trainability and weight decay.
pub struct Arena {
    pub trainable: bool,
    pub decay: bool,
    /// Elements used (a multiple of ALIGN).
    pub len: usize,
    pub weights: Tensor,
    pub grads: Option<Tensor>,
    pub m: Option<Tensor>,
    pub v: Option<Tensor>,
}

/// Where a compact parameter sits: compact arena `arena`, words `[offset, offset + words)`.
#[derive(Clone, Copy, Debug)]
pub struct CompactSlot {
    pub arena: usize,
    pub offset: usize,
    pub words: usize,
    pub format: CompactFormat,
}

/// A u32 buffer of compact frozen parameters, each padded to 256 bytes.
pub struct CompactArena {
    /// Words used (a multiple of ALIGN).
    pub len: usize,
    pub words: Tensor,
}

/// A parameter's initial value: f32 values, or (for a parameter laid out compact) its
/// compact tensor.
pub enum ParamInit {
    F32(Vec<f32>),
    Compact(CompactTensor),
}

pub struct ParamStore {
    pub specs: Vec<ParamSpec>,
    pub slots: Vec<Slot>,
    pub arenas: Vec<Arena>,
    /// Per parameter: where it sits when it is compact.
    pub compact_slots: Vec<Option<CompactSlot>>,
    pub compact_arenas: Vec<CompactArena>,
    index: HashMap<String, usize>,
}

/// The (rows, cols) a compact parameter is stored as: frozen, 2-D, and a shape its format
/// holds (rows of whole blocks). The memory estimate asks the same question, so the two
/// cannot disagree.
pub fn compact_shape(spec: &ParamSpec, format: CompactFormat) -> Result<(usize, usize)> {
    if !spec.may_be_compact() {
        return Err(Error::Weights(format!(
            "{} ({:?}, {}) cannot stay compact: only frozen matrices that the matmuls or the token gather read do",
            spec.name,
            spec.shape,
            if spec.trainable { "trainable" } else { "frozen" }
        )));
    }
    format.check_shape(&spec.name, spec.shape[0], spec.shape[1])?;
    Ok((spec.shape[0], spec.shape[1]))
}

/// The words a compact parameter takes in its arena (padded to 256 bytes).
pub fn compact_words(spec: &ParamSpec, format: CompactFormat) -> Result<usize> {
    let (rows, cols) = compact_shape(spec, format)?;
    Ok((rows * format.row_words(cols)).next_multiple_of(ALIGN))
}

impl ParamStore {
    /// Lay out `specs` in arenas no larger than one binding, fill them from `init` (called
    /// per parameter with its spec; returns its values), and upload.
    pub fn new(gpu: &Gpu, specs: Vec<ParamSpec>, mut init: impl FnMut(&ParamSpec) -> Result<Vec<f32>>) -> Result<Self> {
        Self::new_compact(gpu, specs, |_| None, |s| init(s).map(ParamInit::F32))
    }

    /// `new`, with the frozen matrices for which `compact_of` names a format kept in that
    /// compact form (`init` must then give `ParamInit::Compact` of that format and shape;
    /// every other parameter `ParamInit::F32`). Every shape and size is checked, and a
    /// tensor larger than one binding refused by name, before anything is allocated.
    pub fn new_compact(
        gpu: &Gpu,
        specs: Vec<ParamSpec>,
        compact_of: impl Fn(&ParamSpec) -> Option<CompactFormat>,
        mut init: impl FnMut(&ParamSpec) -> Result<ParamInit>,
    ) -> Result<Self> {
        let cap = (gpu.max_binding() as usize / 4) / ALIGN * ALIGN;
        let mut slots = vec![Slot { arena: 0, offset: 0 }; specs.len()];
        let mut compact_slots: Vec<Option<CompactSlot>> = vec![None; specs.len()];
        // Compact arenas being filled, each as (member ids, length in words).
        let mut compact_layout: Vec<(Vec<Pid>, usize)> = Vec::new();
        // (trainable, decay) -> arenas being filled, each as (member ids, length)
        let mut layout: Vec<(bool, bool, Vec<Pid>, usize)> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if let Some(format) = compact_of(s) {
                let n = compact_words(s, format)?;
                if n > cap {
                    return Err(Error::Limit {
                        what: format!("parameter {} ({:?}) as {}", s.name, s.shape, format.name()),
                        need: n as u64 * 4,
                        have: cap as u64 * 4,
                        limit: "maxStorageBufferBindingSize",
                    });
                }
                let a = match compact_layout.iter().rposition(|a| a.1 + n <= cap) {
                    Some(a) => a,
                    None => {
                        compact_layout.push((Vec::new(), 0));
                        compact_layout.len() - 1
                    }
                };
                let (rows, cols) = compact_shape(s, format)?;
                let words = rows * format.row_words(cols);
                compact_slots[i] = Some(CompactSlot { arena: a, offset: compact_layout[a].1, words, format });
                slots[i] = Slot { arena: usize::MAX, offset: 0 };
                compact_layout[a].0.push(i);
                compact_layout[a].1 += n;
                continue;
            }
            let n = s.numel().next_multiple_of(ALIGN);
            if n > cap {
                return Err(Error::Limit {
                    what: format!("parameter {} ({:?})", s.name, s.shape),
                    need: n as u64 * 4,
                    have: cap as u64 * 4,
                    limit: "maxStorageBufferBindingSize",
                });
            }
            let key = (s.trainable, s.trainable && s.decay());
            let open = layout.iter_mut().rposition(|a| (a.0, a.1) == key && a.3 + n <= cap);
            let a = match open {
                Some(a) => a,
                None => {
                    layout.push((key.0, key.1, Vec::new(), 0));
                    layout.len() - 1
                }
            };
            slots[i] = Slot { arena: a, offset: layout[a].3 };
            layout[a].2.push(i);
            layout[a].3 += n;
        }
        let mut arenas = Vec::new();
        for (a, (trainable, decay, members, len)) in layout.into_iter().enumerate() {
            let mut host = vec![0f32; len];
            for &i in &members {
                let vals = match init(&specs[i])? {
                    ParamInit::F32(v) => v,
                    ParamInit::Compact(_) => {
                        return Err(Error::Weights(format!(
                            "{}: given in compact form but laid out as f32",
                            specs[i].name
                        )))
                    }
                };
                if vals.len() != specs[i].numel() {
                    return Err(Error::Weights(format!(
                        "{}: expected {} values for shape {:?}, got {}",
                        specs[i].name,
                        specs[i].numel(),
                        specs[i].shape,
                        vals.len()
                    )));
                }
                let o = slots[i].offset;
                host[o..o + vals.len()].copy_from_slice(&vals);
            }
            let weights = gpu.upload_f32(&format!("params{a}"), &host)?;
            let (grads, m, v) = if trainable {
                (
                    Some(gpu.zeros(&format!("grads{a}"), len)?),
                    Some(gpu.zeros(&format!("adam_m{a}"), len)?),
                    Some(gpu.zeros(&format!("adam_v{a}"), len)?),
                )
            } else {
                (None, None, None)
            };
            arenas.push(Arena { trainable, decay, len, weights, grads, m, v });
        }
        let mut compact_arenas = Vec::new();
        for (a, (members, len)) in compact_layout.into_iter().enumerate() {
            let mut host = vec![0u32; len];
            for &i in &members {
                let slot = compact_slots[i].expect("laid out above");
                let t = match init(&specs[i])? {
                    ParamInit::Compact(t) => t,
                    ParamInit::F32(_) => {
                        return Err(Error::Weights(format!(
                            "{}: given as f32 but laid out as {}",
                            specs[i].name,
                            slot.format.name()
                        )))
                    }
                };
                if t.format != slot.format || [t.rows, t.cols] != specs[i].shape[..] || t.words.len() != slot.words {
                    return Err(Error::Weights(format!(
                        "{}: expected {} {:?}, got {} {} x {} ({} words)",
                        specs[i].name,
                        slot.format.name(),
                        specs[i].shape,
                        t.format.name(),
                        t.rows,
                        t.cols,
                        t.words.len()
                    )));
                }
                host[slot.offset..slot.offset + slot.words].copy_from_slice(&t.words);
            }
            compact_arenas.push(CompactArena { len, words: gpu.upload_u32(&format!("compact{a}"), &host)? });
        }
        let index = specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        Ok(ParamStore { specs, slots, arenas, compact_slots, compact_arenas, index })
    }

    /// A compact parameter's words and format, bound as `wq` by the kernels that read it;
    /// `None` for an f32 one.
    pub fn compact(&self, p: Pid) -> Option<CompactWeight> {
        let c = self.compact_slots[p]?;
        let s = &self.specs[p];
        Some(CompactWeight {
            format: c.format,
            rows: s.shape[0],
            cols: s.shape[1],
            words: self.compact_arenas[c.arena].words.view(c.offset, c.words),
        })
    }

    pub fn id(&self, name: &str) -> Result<Pid> {
        self.index.get(name).copied().ok_or_else(|| Error::Weights(format!("no parameter named {name}")))
    }

    /// An f32 parameter's values. For a compact parameter, its words (what `compact`
    /// returns with the format); never f32 values.
    pub fn weight(&self, p: Pid) -> Tensor {
        if let Some(c) = self.compact(p) {
            return c.words;
        }
        let s = &self.slots[p];
        self.arenas[s.arena].weights.view(s.offset, self.specs[p].numel())
    }

    /// The gradient of a trainable parameter; `None` for a frozen one.
    pub fn grad(&self, p: Pid) -> Option<Tensor> {
        if self.compact_slots[p].is_some() {
            return None;
        }
        let s = &self.slots[p];
        self.arenas[s.arena].grads.as_ref().map(|g| g.view(s.offset, self.specs[p].numel()))
    }

    pub fn num_params(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }

    pub fn num_trainable(&self) -> usize {
        self.specs.iter().filter(|s| s.trainable).map(|s| s.numel()).sum()
    }

    /// Bytes of GPU memory: weights, and gradients + two moments for trainable arenas,
    /// and the compact arenas.
    pub fn gpu_bytes(&self) -> u64 {
        let f32s: u64 = self.arenas.iter().map(|a| a.len as u64 * 4 * if a.trainable { 4 } else { 1 }).sum();
        f32s + self.compact_bytes()
    }

    /// Of `gpu_bytes`, the compact arenas.
    pub fn compact_bytes(&self) -> u64 {
        self.compact_arenas.iter().map(|a| a.len as u64 * 4).sum()
    }

    /// Read one parameter's values back (tests, export); a compact one is dequantized on
    /// the host (the values every kernel reads, bit for bit).
    /// How the weights sit on the GPU: `f32`, or each format with its tensor count in
    /// first-seen order (`q4_1 x 210, f32 x 61, q8_0 x 1`), as the page and `bench` show it.
    pub fn precision_summary(&self) -> String {
        let mut formats: Vec<(&str, usize)> = Vec::new();
        for p in 0..self.specs.len() {
            let f = self.compact(p).map_or("f32", |c| c.format.name());
            match formats.iter_mut().find(|(n, _)| *n == f) {
                Some(e) => e.1 += 1,
                None => formats.push((f, 1)),
            }
        }
        match &formats[..] {
            [("f32", _)] => "f32".to_string(),
            _ => formats.iter().map(|(f, n)| format!("{f} x {n}")).collect::<Vec<_>>().join(", "),
        }
    }

    pub async fn read(&self, gpu: &Gpu, p: Pid) -> Result<Vec<f32>> {
        if let Some(c) = self.compact(p) {
            let words = gpu.read_u32(&c.words).await?;
            return Ok(CompactTensor { format: c.format, rows: c.rows, cols: c.cols, words }.dequantize());
        }
        gpu.read_f32(&self.weight(p)).await
    }

    pub async fn read_grad(&self, gpu: &Gpu, p: Pid) -> Result<Option<Vec<f32>>> {
        match self.grad(p) {
            Some(g) => Ok(Some(gpu.read_f32(&g).await?)),
            None => Ok(None),
        }
    }
}
