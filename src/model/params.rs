//! Parameters, their gradients and optimizer moments, packed into a few large "arena"
//! buffers. One arena is one binding, so gradient clipping and AdamW are a handful of
//! dispatches instead of one per tensor, and a checkpoint is a few contiguous copies.
//! Frozen parameters live in arenas of their own and get no gradient or moment storage.

use std::collections::HashMap;

pub use super::spec::{ParamSpec, Pid};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// Elements per alignment unit: 64 f32 = 256 bytes, WebGPU's storage offset alignment.
const ALIGN: usize = 64;

/// Where a parameter sits: arena `arena`, elements `[offset, offset + numel)`.
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

pub struct ParamStore {
    pub specs: Vec<ParamSpec>,
    pub slots: Vec<Slot>,
    pub arenas: Vec<Arena>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// Lay out `specs` in arenas no larger than one binding, fill them from `init` (called
    /// per parameter with its spec; returns its values), and upload.
    pub fn new(gpu: &Gpu, specs: Vec<ParamSpec>, mut init: impl FnMut(&ParamSpec) -> Result<Vec<f32>>) -> Result<Self> {
        let cap = (gpu.max_binding() as usize / 4) / ALIGN * ALIGN;
        let mut slots = vec![Slot { arena: 0, offset: 0 }; specs.len()];
        // (trainable, decay) -> arenas being filled, each as (member ids, length)
        let mut layout: Vec<(bool, bool, Vec<Pid>, usize)> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
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
                let vals = init(&specs[i])?;
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
        let index = specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        Ok(ParamStore { specs, slots, arenas, index })
    }

    pub fn id(&self, name: &str) -> Result<Pid> {
        self.index.get(name).copied().ok_or_else(|| Error::Weights(format!("no parameter named {name}")))
    }

    pub fn weight(&self, p: Pid) -> Tensor {
        let s = &self.slots[p];
        self.arenas[s.arena].weights.view(s.offset, self.specs[p].numel())
    }

    /// The gradient of a trainable parameter; `None` for a frozen one.
    pub fn grad(&self, p: Pid) -> Option<Tensor> {
        let s = &self.slots[p];
        self.arenas[s.arena].grads.as_ref().map(|g| g.view(s.offset, self.specs[p].numel()))
    }

    pub fn num_params(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }

    pub fn num_trainable(&self) -> usize {
        self.specs.iter().filter(|s| s.trainable).map(|s| s.numel()).sum()
    }

    /// Bytes of GPU memory: weights, and gradients + two moments for trainable arenas.
    pub fn gpu_bytes(&self) -> u64 {
        self.arenas.iter().map(|a| a.len as u64 * 4 * if a.trainable { 4 } else { 1 }).sum()
    }

    /// Read one parameter's values back (tests, export).
    pub async fn read(&self, gpu: &Gpu, p: Pid) -> Result<Vec<f32>> {
        gpu.read_f32(&self.weight(p)).await
    }

    pub async fn read_grad(&self, gpu: &Gpu, p: Pid) -> Result<Option<Vec<f32>>> {
        match self.grad(p) {
            Some(g) => Ok(Some(gpu.read_f32(&g).await?)),
            None => Ok(None),
        }
    }
}
