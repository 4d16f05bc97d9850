//! Causal self-attention with grouped-query heads and segment masking
//! (shaders/attention.wgsl), flash style: no (T, T) tensor is ever stored. The forward saves
//! the log-sum-exp per query; the backward recomputes the probabilities from it.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use std::sync::OnceLock;

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Kernel, Tensor, WG};

const SOURCE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/attention.wgsl"));

/// shaders/attention.wgsl at the largest head size and workgroup (the file as a whole, for
/// the compile tests; the passes run through `head_kernel`).
pub const ATTENTION: Kernel = Kernel {
    name: "attention",
    file: SOURCE,
    consts: &[
        ("BLOCK", GPU_BLOCK),
        ("DV", MAXV),
        ("TILE", tile_rows(MAXV, GPU_BLOCK)),
        ("TILE_VEC", tile_rows(MAXV, GPU_BLOCK) * MAXV),
    ],
    includes: &[],
    enable: "",
};

/// WebGPU's default `maxComputeWorkgroupStorageSize`, which every adapter offers.
const WORKGROUP_BYTES: u32 = 16384;

/// Rows of K/V (or Q/dOut) per workgroup tile for head rows of `dv` vec4s and `block`
/// threads: the most that keep the tile's arrays (K and V rows, 2 * 16 * dv bytes a row,
/// plus a segment id and an (lse, delta) pair, 12 bytes) within WORKGROUP_BYTES, and no more
/// than the threads (one thread stages a row's segment). The table this gives:
///
/// | D                  | 4, 8 | 16  | 24 | 32 | 40 | 48 | 64 | 80 | 96 | 128 | 192 | 256 |
/// |--------------------|------|-----|----|----|----|----|----|----|----|-----|-----|-----|
/// | TILE, 64 threads   | 64   | 64  | 64 | 61 | 49 | 41 | 31 | 25 | 21 | 15  | 10  | 7   |
/// | TILE, 128 threads  | 128  | 117 | 80 | 61 | 49 | 41 | 31 | 25 | 21 | 15  | 10  | 7   |
pub const fn tile_rows(dv: u32, block: u32) -> u32 {
    let t = WORKGROUP_BYTES / (32 * dv + 12);
    if t < block {
        t
    } else {
        block
    }
}

/// Workgroup bytes of the largest entry point (forward, dQ and dK/dV stage the same tiles;
/// decoding's BLOCK scores and partial outputs are smaller) for head rows of `dv` vec4s.
pub const fn workgroup_bytes(dv: u32, block: u32) -> u32 {
    let tile = tile_rows(dv, block);
    let tiles = tile * (32 * dv + 12);
    let decode = block * (4 + 16) + 4;
    if tiles > decode {
        tiles
    } else {
        decode
    }
}

// Every head size and workgroup the table can pick fits WebGPU's default workgroup storage.
const _: () = {
    let mut dv = 1;
    while dv <= MAXV {
        assert!(workgroup_bytes(dv, CPU_BLOCK) <= WORKGROUP_BYTES && workgroup_bytes(dv, GPU_BLOCK) <= WORKGROUP_BYTES);
        assert!(dv <= CPU_BLOCK && tile_rows(dv, GPU_BLOCK) >= 1); // decoding's thread groups
        dv += 1;
    }
};

/// Threads per workgroup (queries or keys a workgroup owns) on a CPU adapter and a GPU.
const CPU_BLOCK: u32 = 64;
const GPU_BLOCK: u32 = 128;

/// The attention kernels' layout on an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Threads per workgroup, each owning one query (or key) row: 64 or 128.
    pub block: u32,
    /// dK/dV split over the heads of a group and query chunks (a third grid dimension),
    /// with partial sums in scratch added in a fixed order by a second pass.
    pub split: bool,
}

/// The one table that picks the attention kernels' layout for an adapter (`Gpu::matmul_cpu`,
/// which `WEBTUNE_MATMUL=gpu|cpu` overrides, as for the matmuls).
///
/// | adapter     | threads | dK/dV                         | why |
/// |-------------|---------|-------------------------------|-----|
/// | GPU         | 128     | split over heads and queries  | a GPU of 100+ compute units needs more than ceil(T/64) * B*Hk workgroups, and 4+ warps per workgroup |
/// | CPU adapter | 64      | one workgroup per key block   | two to sixteen cores are filled anyway; the causal diagonal's masked lanes grow with the block, and the partials' extra pass costs time (measured in tests/ops/attention.rs `attention_timing`) |
///
/// Measured on lavapipe (2 shared cores, `attention_timing`, best of 3, noisy: the machine
/// ran other builds), backward ms, 64 unsplit vs 128 split: SmolLM2's 4 x 128 (9 over 3
/// heads, D 64) 567-614 vs 642-657; 4 x 256 1696-1924 vs 1843-1861; D 128 at 1 x 256 446-456
/// vs 544-548; D 256 692-882 vs 916-1192. The 64-thread unsplit layout is the old kernel's
/// (4 x 256 backward 1981-2110 ms in the same runs).
pub fn choose(cpu_adapter: bool) -> Variant {
    if cpu_adapter {
        Variant { block: CPU_BLOCK, split: false }
    } else {
        Variant { block: GPU_BLOCK, split: true }
    }
}

/// The variant for `enc`'s adapter.
fn chosen(enc: &Encoder) -> Variant {
    choose(enc.gpu().matmul_cpu)
}

/// The kernel file for head size D = 4 * dv and `block` threads: one pipeline set per head
/// size and workgroup, so the shader's head rows are constant-length arrays (registers, not
/// local memory).
fn head_kernel(dv: usize, block: u32) -> &'static Kernel {
    const N: usize = MAXV as usize;
    static KERNELS: [[OnceLock<Kernel>; N]; 2] = [[const { OnceLock::new() }; N], [const { OnceLock::new() }; N]];
    assert!((1..=N).contains(&dv), "head size {} (checked by AttnShape::validate)", 4 * dv);
    let which = usize::from(block == GPU_BLOCK);
    let block = [CPU_BLOCK, GPU_BLOCK][which];
    KERNELS[which][dv - 1].get_or_init(|| {
        let dv = dv as u32;
        let tile = tile_rows(dv, block);
        let consts = vec![("BLOCK", block), ("DV", dv), ("TILE", tile), ("TILE_VEC", tile * dv)];
        // Leaked once per head size and workgroup (128 at most): kernels are 'static like
        // the pipeline cache that keys on their names.
        let name = Box::leak(format!("attention.d{}.b{block}", 4 * dv).into_boxed_str());
        Kernel { name, file: SOURCE, consts: consts.leak(), includes: &[], enable: "" }
    })
}

/// Head rows live in registers as at most MAXV vec4s (MAX_HEAD_SIZE is defined with the
/// model configuration, which checks it without a GPU).
pub use crate::model::config::MAX_HEAD_SIZE;
const MAXV: u32 = (MAX_HEAD_SIZE / 4) as u32;

/// The split dK/dV's partial sums per key block at most, over the heads of a group and
/// query chunks together (more when a group has more heads: one partial per head).
const SPLIT_MAX: usize = 4;

/// f32s of scratch the split dK/dV backward needs for `rows` = B*T tokens (any B and T),
/// H query heads over Hk kv heads of size D: dK's and dV's partials, max(H/Hk, SPLIT_MAX) of
/// each. The model workspace's shared reduction buffer holds them.
pub fn scratch_len(rows: usize, h: usize, hk: usize, d: usize) -> usize {
    2 * (h / hk.max(1)).max(SPLIT_MAX) * rows * hk * d
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    b: u32,
    t: u32,
    h: u32,
    hk: u32,
    dv: u32,
    group: u32,
    tile: u32,
    scale: f32,
    /// Keys a query sees at most (itself and the window - 1 before it); u32::MAX: all.
    window: u32,
    /// Split dK/dV: queries per partial and query chunks per head (1 and T: unsplit).
    qchunk: u32,
    nchunk: u32,
    _pad: u32,
}

/// B sequences of T tokens, H query heads sharing Hk key/value heads, head size D.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hk: usize,
    pub d: usize,
    /// Sliding-window attention (Gemma 3's local layers): query tq sees keys tk with
    /// tq - tk < window, as transformers' sliding-window causal mask; None: every earlier key.
    pub window: Option<usize>,
    /// The scores' scale; None: 1 / sqrt(D). (Gemma 3: query_pre_attn_scalar^-0.5.)
    pub scale: Option<f32>,
}

/// The kernels' window parameter: u32::MAX for none (no difference tq - tk reaches it).
fn window_param(w: Option<usize>) -> u32 {
    w.map_or(u32::MAX, |w| w.min(u32::MAX as usize) as u32)
}

impl AttnShape {
    /// Whether the kernels can run this shape; a model loader should call this to turn an
    /// unsupported config into an error instead of the launchers' panic.
    pub fn validate(&self) -> Result<()> {
        let AttnShape { b, t, h, hk, d, window, scale } = *self;
        if window == Some(0) || scale.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return Err(Error::Config(format!(
                "attention needs a window of at least 1 key and a positive finite scale (got {window:?}, {scale:?})"
            )));
        }
        if b == 0 || t == 0 || h == 0 || hk == 0 || h % hk != 0 {
            return Err(Error::Config(format!(
                "attention needs B, T, H, Hk > 0 and H a multiple of Hk (got B {b} T {t} H {h} Hk {hk})"
            )));
        }
        if d % 4 != 0 || d == 0 || d > MAX_HEAD_SIZE {
            return Err(Error::Config(format!(
                "attention head size {d} unsupported: it must be a multiple of 4 between 4 and {MAX_HEAD_SIZE}"
            )));
        }
        if b * h > 65535 || t.div_ceil(CPU_BLOCK as usize) > 65535 || t > u32::MAX as usize / 4 {
            return Err(Error::Config(format!("attention grid too large: B*H = {} (at most 65535)", b * h)));
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.b * self.t
    }

    fn params(&self, v: Variant) -> Params {
        let dv = self.d / 4;
        let (qchunk, nchunk) = self.split(v);
        Params {
            b: self.b as u32,
            t: self.t as u32,
            h: self.h as u32,
            hk: self.hk as u32,
            dv: dv as u32,
            group: (self.h / self.hk) as u32,
            tile: tile_rows(dv as u32, v.block),
            scale: self.scale.unwrap_or(1.0 / (self.d as f32).sqrt()),
            window: window_param(self.window),
            qchunk: qchunk as u32,
            nchunk: nchunk as u32,
            _pad: 0,
        }
    }

    /// The split dK/dV's (queries per chunk, chunks per head): the queries that see the
    /// first key block (all of T, or the window's reach) in at most SPLIT_MAX / (H/Hk)
    /// chunks of whole blocks. (T, 1) when the variant does not split.
    fn split(&self, v: Variant) -> (usize, usize) {
        let block = v.block as usize;
        let span = self.window.map_or(self.t, |w| self.t.min(w.saturating_add(block - 1)));
        if !v.split {
            return (self.t, 1);
        }
        let per_head = (SPLIT_MAX / (self.h / self.hk)).max(1);
        let qchunk = block * span.div_ceil(block).div_ceil(per_head);
        (qchunk, span.div_ceil(qchunk))
    }

    /// f32s of scratch the split needs (`scratch_len` bounds it for any B*T = rows).
    fn split_len(&self, v: Variant) -> usize {
        2 * (self.h / self.hk) * self.split(v).1 * self.rows() * self.hk * self.d
    }

    /// Visible (query, key) pairs per head when no segments split the sequences.
    fn pairs(&self) -> u64 {
        (self.b * self.h * self.t * (self.t + 1) / 2) as u64
    }

    /// Bytes of K/V (or Q/dOut) rows that workgroups stream through tiles: each block of
    /// rows reads about half the sequence on average.
    fn streamed(&self, heads: usize, block: u32) -> u64 {
        let block = block as usize;
        (self.b * heads * self.t.div_ceil(block) * (self.t / 2 + block) * self.d * 4 * 2) as u64
    }
}

/// o(rows, H*D) = softmax(q k^T * scale, causal + segment mask) v, and lse(B*H*T, 2) the
/// log-sum-exp of each query's scaled scores and a zero (index 2 * ((b*H + h)*T + t); the
/// backward's dQ pass writes delta into the second slot).
/// q (rows, H*D), k and v (rows, Hk*D), seg u32 (rows).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    enc: &mut Encoder,
    s: &AttnShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: &Tensor,
    o: &Tensor,
    lse: &Tensor,
) {
    let var = chosen(enc);
    forward_with(enc, var, s, q, k, v, seg, o, lse)
}

/// `forward` in the layout `var` (tests run every variant on any adapter).
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    enc: &mut Encoder,
    var: Variant,
    s: &AttnShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: &Tensor,
    o: &Tensor,
    lse: &Tensor,
) {
    if let Err(e) = s.validate() {
        panic!("{e}");
    }
    let (rows, hd, kd) = (s.rows(), s.h * s.d, s.hk * s.d);
    debug_assert!(q.len >= rows * hd && k.len >= rows * kd && v.len >= rows * kd && o.len >= rows * hd);
    debug_assert!(seg.len >= rows && lse.len >= 2 * s.b * s.h * s.t);
    let cost = Cost {
        flops: 4 * s.pairs() * s.d as u64,
        bytes: s.streamed(s.h, var.block) + (4 * rows * (2 * hd + 1) + 8 * s.b * s.h * s.t) as u64,
    };
    enc.dispatch(
        head_kernel(s.d / 4, var.block),
        "attention_forward",
        &s.params(var),
        &[Arg::R(q), Arg::R(k), Arg::R(v), Arg::R(seg), Arg::W(o), Arg::W(lse)],
        [s.t.div_ceil(var.block as usize) as u32, (s.b * s.h) as u32, 1],
        cost,
    );
}

/// Overwrite dq(rows, H*D), dk and dv(rows, Hk*D) with the gradients of the loss given
/// dout(rows, H*D), from the forward's inputs, o and lse (whose second slots get delta =
/// rowsum(dout * o)). `scratch` (`scratch_len(rows, H, Hk, D)` f32s) holds the split dK/dV's
/// partial sums; a smaller one makes the dK/dV pass unsplit. No atomics, deterministic: dQ
/// first, with one thread per query computing its delta and looping over keys; then dK/dV
/// with one thread per key looping over the queries (of every head in its group, or of one
/// head and one query chunk when split, then a pass adds the partials in a fixed order)
/// that see it.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    enc: &mut Encoder,
    s: &AttnShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scratch: &Tensor,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) {
    let var = chosen(enc);
    backward_with(enc, var, s, q, k, v, seg, o, lse, dout, scratch, dq, dk, dv)
}

/// `backward` in the layout `var`.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    enc: &mut Encoder,
    var: Variant,
    s: &AttnShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scratch: &Tensor,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) {
    if let Err(e) = s.validate() {
        panic!("{e}");
    }
    let (rows, hd, kd, n) = (s.rows(), s.h * s.d, s.hk * s.d, s.b * s.h * s.t);
    debug_assert!(dout.len >= rows * hd && dq.len >= rows * hd && dk.len >= rows * kd && dv.len >= rows * kd);
    debug_assert!(lse.len >= 2 * n);
    // Split only where it makes more than one partial per key block and they fit.
    let split = var.split && s.split(var).1 * s.h / s.hk > 1 && scratch.len >= s.split_len(var);
    let var = Variant { split, ..var };
    let p = s.params(var);
    let kernel = head_kernel(s.d / 4, var.block);
    let blocks = s.t.div_ceil(var.block as usize) as u32;
    enc.dispatch(
        kernel,
        "attention_backward_dq",
        &p,
        &[Arg::R(q), Arg::R(k), Arg::R(v), Arg::R(seg), Arg::W(lse), Arg::R(dout), Arg::R(o), Arg::W(dq)],
        [blocks, (s.b * s.h) as u32, 1],
        Cost {
            flops: 6 * s.pairs() * s.d as u64 + 2 * (n * s.d) as u64,
            bytes: s.streamed(s.h, var.block) + (4 * rows * 4 * hd + 16 * n) as u64,
        },
    );
    let dkv_cost =
        Cost { flops: 8 * s.pairs() * s.d as u64, bytes: s.streamed(s.h, var.block) + (4 * rows * 4 * kd) as u64 };
    let (r, sg, st, d_o) = (Arg::R(q), Arg::R(seg), Arg::R(lse), Arg::R(dout));
    if split {
        let z = (s.h / s.hk * p.nchunk as usize) as u32;
        enc.dispatch(
            kernel,
            "attention_backward_dkv_part",
            &p,
            &[r, Arg::R(k), Arg::R(v), sg, st, d_o, Arg::W(scratch)],
            [blocks, (s.b * s.hk) as u32, z],
            dkv_cost,
        );
        // Each key reads the partials of the chunks that see its block: z at most.
        let parts = s.split_len(var) as u64;
        enc.dispatch(
            kernel,
            "attention_dkv_reduce",
            &p,
            &[Arg::R(scratch), Arg::W(dk), Arg::W(dv)],
            grid_1d(rows * kd / 4, WG),
            Cost { flops: parts, bytes: 4 * (parts + 2 * (rows * kd) as u64) },
        );
    } else {
        enc.dispatch(
            kernel,
            "attention_backward_dkv",
            &p,
            &[r, Arg::R(k), Arg::R(v), sg, st, d_o, Arg::W(dk), Arg::W(dv)],
            [blocks, (s.b * s.hk) as u32, 1],
            dkv_cost,
        );
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CacheParams {
    b: u32,
    t: u32,
    h: u32,
    hk: u32,
    dv: u32,
    group: u32,
    cap: u32,
    scale: f32,
    window: u32,
    _pad: [u32; 3],
}

/// Attention of new tokens against a KV cache (generation): B sequences, each with T new
/// tokens (rows laid out (B, T)), H query heads sharing Hk key/value heads of size D, and
/// caches of `cap` positions per sequence, (B, cap, Hk*D).
#[derive(Clone, Copy, Debug)]
pub struct CacheShape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hk: usize,
    pub d: usize,
    pub cap: usize,
    /// As in `AttnShape`: the row at position pos sees cached keys pos - window + 1 ..= pos.
    pub window: Option<usize>,
    pub scale: Option<f32>,
}

impl CacheShape {
    pub fn validate(&self) -> Result<()> {
        let (window, scale) = (self.window, self.scale);
        AttnShape { b: self.b, t: self.t, h: self.h, hk: self.hk, d: self.d, window, scale }.validate()?;
        if self.cap == 0 || self.b * self.t > 65535 || self.h > 65535 {
            return Err(Error::Config(format!(
                "cached attention grid unsupported: B*T = {} rows (at most 65535), H {}, cache of {} positions",
                self.b * self.t,
                self.h,
                self.cap
            )));
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.b * self.t
    }

    fn params(&self) -> CacheParams {
        CacheParams {
            b: self.b as u32,
            t: self.t as u32,
            h: self.h as u32,
            hk: self.hk as u32,
            dv: (self.d / 4) as u32,
            group: (self.h / self.hk) as u32,
            cap: self.cap as u32,
            scale: self.scale.unwrap_or(1.0 / (self.d as f32).sqrt()),
            window: window_param(self.window),
            _pad: [0; 3],
        }
    }
}

/// Write the new rows' k and v (rows, Hk*D) into the caches k_cache, v_cache (B*cap, Hk*D)
/// at row b*cap + pos[r]. pos u32 (rows), each < cap (the caller checks).
pub fn kv_append(
    enc: &mut Encoder,
    s: &CacheShape,
    k: &Tensor,
    v: &Tensor,
    pos: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
) {
    if let Err(e) = s.validate() {
        panic!("{e}");
    }
    let (rows, kd) = (s.rows(), s.hk * s.d);
    debug_assert!(k.len >= rows * kd && v.len >= rows * kd && pos.len >= rows);
    debug_assert!(k_cache.len >= s.b * s.cap * kd && v_cache.len >= s.b * s.cap * kd);
    let cost = Cost { flops: 0, bytes: (4 * 4 * rows * kd + 4 * rows) as u64 };
    enc.dispatch(
        head_kernel(s.d / 4, chosen(enc).block),
        "attention_kv_append",
        &s.params(),
        &[Arg::R(k), Arg::R(v), Arg::R(pos), Arg::W(k_cache), Arg::W(v_cache)],
        grid_1d(rows * kd / 4, WG),
        cost,
    );
}

/// o(rows, H*D) = softmax(q k^T * scale) v over the cached keys 0..=pos[r] of each new
/// row's sequence (its own key included: `kv_append` first). q (rows, H*D), caches
/// (B*cap, Hk*D), pos u32 (rows). `visible` is the number of (row, key) pairs the rows see
/// (the sum of pos[r] + 1), for the cost only: the kernel reads the positions on the GPU.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    enc: &mut Encoder,
    s: &CacheShape,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: &Tensor,
    o: &Tensor,
    visible: usize,
) {
    if let Err(e) = s.validate() {
        panic!("{e}");
    }
    let (rows, hd, kd) = (s.rows(), s.h * s.d, s.hk * s.d);
    debug_assert!(q.len >= rows * hd && o.len >= rows * hd && pos.len >= rows);
    debug_assert!(k_cache.len >= s.b * s.cap * kd && v_cache.len >= s.b * s.cap * kd);
    // Every (row, head) workgroup streams its visible K and V rows once.
    let pairs = (visible * s.h) as u64;
    let cost =
        Cost { flops: 4 * pairs * s.d as u64, bytes: 8 * pairs * s.d as u64 + (4 * (2 * rows * hd + rows)) as u64 };
    enc.dispatch(
        head_kernel(s.d / 4, chosen(enc).block),
        "attention_decode",
        &s.params(),
        &[Arg::R(q), Arg::R(k_cache), Arg::R(v_cache), Arg::R(pos), Arg::W(o)],
        [rows as u32, s.h as u32, 1],
        cost,
    );
}
