//! Token and position embeddings (shaders/embedding.wgsl): a gather forward (from an f32
//! table, or from a compact frozen one through the dequantizers of shaders/quant.wgsl),
//! and a deterministic, atomic-free scatter-add backward driven by a host-built grouping
//! of rows by id, in segments of at most `SEG` rows so that a frequent id is summed in
//! parallel.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Gpu, Kernel, Tensor, WG};
use crate::load::compact::{CompactFormat, QUANT_INCLUDES};
use crate::ops::dequant::CompactWeight;
use crate::Result;

/// The f32-table kernel. The file also holds the compact gather, so it is built with the
/// dequantizers and `WFMT` = F32 (unused by these entry points; dead code to the compiler).
pub const EMBEDDING: Kernel = Kernel {
    name: "embedding",
    file: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/embedding.wgsl")),
    consts: &[("WFMT", CompactFormat::F32 as u32), ("HAS_POS", HAS_POS)],
    includes: QUANT_INCLUDES,
    enable: "",
};

// The compact gather, one pipeline per format (index with `CompactFormat::code`).
crate::compact_kernels!(EMBEDDING_COMPACT, "embedding", HAS_POS);

const HAS_POS: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    flags: u32,
    n_uniq: u32,
    /// Multiplies the token rows (Gemma 3's sqrt(C)); 1.0 otherwise.
    scale: f32,
    _pad: [u32; 3],
}

/// Rows per segment of the backward's first stage: a workgroup sums at most this many
/// rows of one id, so an id that fills the whole batch is summed by many workgroups in
/// parallel, not by one serially.
pub const SEG: usize = 64;

/// `slot` of a segment that is its id's only one: it adds into dw itself.
const DIRECT: u32 = u32::MAX;

/// The rows of a batch grouped by id and cut into segments of at most `SEG` rows, in
/// persistent buffers sized for `cap` rows and rewritten for each batch (`write`), so a
/// training step allocates nothing and binds the same buffers with the same parameters
/// every step (the counts are in `meta`, not in the uniform).
#[derive(Clone)]
pub struct GroupIndex {
    /// u32 (4 * segments_cap): per segment (id, first, end, slot) into `rows`; slot is
    /// DIRECT when the id has one segment, else the row of the partial sums it writes.
    pub segs: Tensor,
    /// u32 (3 * finals_cap): per id with several segments (id, first slot, end slot).
    pub finals: Tensor,
    /// u32 (cap): row indices grouped by id, ascending within an id.
    pub rows: Tensor,
    /// u32 (4): [segments, finals, 0, 0] of the current batch.
    pub meta: Tensor,
    pub cap: usize,
    /// Rows and distinct ids of the current batch.
    pub n: usize,
    pub n_uniq: usize,
}

/// The host side of `GroupIndex::write`: (rows grouped by id, segments, finals).
pub type Plan = (Vec<u32>, Vec<[u32; 4]>, Vec<[u32; 3]>);

/// Group `ids` by id (a stable sort, so rows stay ascending within an id and the GPU's
/// sum order, and so its rounding, depends only on the batch) and cut each group into
/// segments of `SEG` rows.
pub fn plan(ids: &[u32]) -> Plan {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&r| ids[r as usize]);
    let (mut segs, mut finals) = (Vec::new(), Vec::new());
    let mut slots = 0u32;
    let mut k0 = 0;
    while k0 < order.len() {
        let id = ids[order[k0] as usize];
        let mut k1 = k0;
        while k1 < order.len() && ids[order[k1] as usize] == id {
            k1 += 1;
        }
        if k1 - k0 <= SEG {
            segs.push([id, k0 as u32, k1 as u32, DIRECT]);
        } else {
            let first = slots;
            for a in (k0..k1).step_by(SEG) {
                segs.push([id, a as u32, (a + SEG).min(k1) as u32, slots]);
                slots += 1;
            }
            finals.push([id, first, slots]);
        }
        k0 = k1;
    }
    (order, segs, finals)
}

/// Most segments of `cap` rows: one per id with at most SEG rows, and fewer than
/// 2 rows / SEG for the ids with more (each has more than SEG rows).
fn segments_cap(cap: usize) -> usize {
    cap + (2 * cap).div_ceil(SEG)
}

/// Most ids with several segments (each has more than SEG rows).
fn finals_cap(cap: usize) -> usize {
    cap.div_ceil(SEG + 1)
}

/// Elements of the scratch `backward` needs for batches of up to `rows` rows of C
/// channels: one partial row per segment of an id that has several.
pub fn scratch_len(rows: usize, c: usize) -> usize {
    (2 * rows).div_ceil(SEG) * c
}

impl GroupIndex {
    /// Empty buffers for batches of up to `cap` rows.
    pub fn new(gpu: &Gpu, cap: usize) -> Result<GroupIndex> {
        Ok(GroupIndex {
            segs: gpu.zeros("embedding.segs", 4 * segments_cap(cap))?,
            finals: gpu.zeros("embedding.finals", 3 * finals_cap(cap))?,
            rows: gpu.zeros("embedding.rows", cap)?,
            meta: gpu.zeros("embedding.meta", 4)?,
            cap,
            n: 0,
            n_uniq: 0,
        })
    }

    /// Group `ids` (at most `cap`) into these buffers (`write_buffer`: ordered before the
    /// next submit, so the previous batch's backward must be submitted first). Returns the
    /// index of this batch: the same buffers, with its counts.
    pub fn write(&self, gpu: &Gpu, ids: &[u32]) -> GroupIndex {
        assert!(ids.len() <= self.cap, "{} rows in a group index of {}", ids.len(), self.cap);
        let (order, segs, finals) = plan(ids);
        gpu.write_u32(&self.rows, &order);
        gpu.write_u32(&self.segs, bytemuck::cast_slice(&segs));
        gpu.write_u32(&self.finals, bytemuck::cast_slice(&finals));
        gpu.write_u32(&self.meta, &[segs.len() as u32, finals.len() as u32, 0, 0]);
        let n_uniq = segs.iter().filter(|s| s[3] == DIRECT).count() + finals.len();
        GroupIndex { n: ids.len(), n_uniq, ..self.clone() }
    }

    /// `new` and `write` for one batch.
    pub fn build(gpu: &Gpu, ids: &[u32]) -> Result<GroupIndex> {
        Ok(GroupIndex::new(gpu, ids.len())?.write(gpu, ids))
    }
}

/// out(rows, C) = wte(V, C)[ids(rows)] (+ wpe(P, C)[pos(rows)]).
pub fn forward(
    enc: &mut Encoder,
    ids: &Tensor,
    wte: &Tensor,
    pos: Option<(&Tensor, &Tensor)>,
    out: &Tensor,
    rows: usize,
    c: usize,
) {
    forward_scaled(enc, ids, wte, 1.0, pos, out, rows, c)
}

/// out(rows, C) = wte(V, C)[ids(rows)] * scale (+ wpe(P, C)[pos(rows)]): Gemma 3's scaled
/// embedding (scale = sqrt(C) rounded to f32, as transformers casts it to the model dtype).
#[allow(clippy::too_many_arguments)]
pub fn forward_scaled(
    enc: &mut Encoder,
    ids: &Tensor,
    wte: &Tensor,
    scale: f32,
    pos: Option<(&Tensor, &Tensor)>,
    out: &Tensor,
    rows: usize,
    c: usize,
) {
    debug_assert!(ids.len >= rows && out.len >= rows * c);
    let dummy = &enc.gpu().dummy.clone();
    let (pos_ids, wpe) = pos.unwrap_or((dummy, dummy));
    let flags = if pos.is_some() { HAS_POS } else { 0 };
    let p = Params { rows: rows as u32, c: c as u32, flags, n_uniq: 0, scale, _pad: [0; 3] };
    let (n, tables) = ((rows * c) as u64, 1 + pos.is_some() as u64);
    let cost = Cost { flops: n * (tables - 1), bytes: 4 * (n * (tables + 1) + rows as u64 * tables) };
    enc.dispatch(
        &EMBEDDING,
        "embedding_forward",
        &p,
        &[Arg::R(ids), Arg::R(wte), Arg::R(pos_ids), Arg::R(wpe), Arg::W(out)],
        grid_1d(rows * c, WG),
        cost,
    );
}

/// out(rows, C) = wte[ids(rows)] (+ wpe(P, C)[pos(rows)]) with the token table compact
/// (V, C) (a frozen embedding: under LoRA it has no gradient, so only the forward reads
/// it compactly). Each row is the host dequantizer's f32 row bit for bit, so the result
/// equals `forward` over the host-dequantized table.
pub fn forward_compact(
    enc: &mut Encoder,
    ids: &Tensor,
    wte: &CompactWeight,
    pos: Option<(&Tensor, &Tensor)>,
    out: &Tensor,
    rows: usize,
) {
    forward_compact_scaled(enc, ids, wte, 1.0, pos, out, rows)
}

/// `forward_compact` with the token rows times `scale` (Gemma 3's sqrt(C)): equals
/// `forward_scaled` over the host-dequantized table bit for bit.
pub fn forward_compact_scaled(
    enc: &mut Encoder,
    ids: &Tensor,
    wte: &CompactWeight,
    scale: f32,
    pos: Option<(&Tensor, &Tensor)>,
    out: &Tensor,
    rows: usize,
) {
    let c = wte.cols;
    debug_assert!(ids.len >= rows && out.len >= rows * c);
    let dummy = &enc.gpu().dummy.clone();
    let (pos_ids, wpe) = pos.unwrap_or((dummy, dummy));
    let flags = if pos.is_some() { HAS_POS } else { 0 };
    let p = Params { rows: rows as u32, c: c as u32, flags, n_uniq: 0, scale, _pad: [0; 3] };
    let (n, tables) = ((rows * c) as u64, 1 + pos.is_some() as u64);
    let row_bytes = wte.format.row_words(c) as u64 * 4;
    let cost = Cost { flops: n * tables, bytes: rows as u64 * row_bytes + 4 * (n * tables + rows as u64 * tables) };
    enc.dispatch(
        &EMBEDDING_COMPACT[wte.format.code() as usize],
        "embedding_forward_compact",
        &p,
        &[Arg::R(ids), Arg::R(&wte.words), Arg::R(pos_ids), Arg::R(wpe), Arg::W(out)],
        grid_1d(rows * c, WG),
        cost,
    );
}

/// dw(V, C) or (P, C) += for each id, the sum of the dout(rows, C) rows with that id.
/// Always accumulates (gradient accumulation over micro-batches). Deterministic, in two
/// stages: each segment of at most SEG rows of one id sums its rows (in row order) into
/// dw, or, when its id has several segments, into its row of `scratch`
/// (`scratch_len(index.cap, c)`); then each such id adds its segments' sums in order.
pub fn backward(enc: &mut Encoder, index: &GroupIndex, dout: &Tensor, dw: &Tensor, scratch: &Tensor, c: usize) {
    backward_scaled(enc, index, dout, 1.0, dw, scratch, c)
}

/// `backward` of `forward_scaled`: dw += for each id, the sum of its dout rows * scale.
pub fn backward_scaled(
    enc: &mut Encoder,
    index: &GroupIndex,
    dout: &Tensor,
    scale: f32,
    dw: &Tensor,
    scratch: &Tensor,
    c: usize,
) {
    if index.n == 0 {
        return;
    }
    debug_assert!(scratch.len >= scratch_len(index.cap, c));
    let (sc, fc) = (segments_cap(index.cap), finals_cap(index.cap));
    // Sized by capacity, not by this batch: the uniform and the grid stay the same from
    // batch to batch (workgroups past meta's counts return at once).
    let p = Params { rows: sc as u32, c: c as u32, flags: 0, n_uniq: fc as u32, scale, _pad: [0; 3] };
    let (n, u, c64) = (index.n as u64, index.n_uniq as u64, c as u64);
    let cost = Cost { flops: n * c64, bytes: 4 * (n * c64 + 2 * u * c64 + n + 4 * u) };
    enc.dispatch(
        &EMBEDDING,
        "embedding_backward",
        &p,
        &[Arg::R(&index.meta), Arg::R(&index.segs), Arg::R(&index.rows), Arg::R(dout), Arg::W(dw), Arg::W(scratch)],
        grid_1d(sc, 1),
        cost,
    );
    let cost = Cost { flops: 2 * n * c64 / SEG as u64, bytes: 4 * 3 * n * c64 / SEG as u64 };
    enc.dispatch(
        &EMBEDDING,
        "embedding_backward_finish",
        &p,
        &[Arg::R(&index.meta), Arg::R(&index.finals), Arg::R(scratch), Arg::W(dw)],
        grid_1d(fc, 1),
        cost,
    );
}
