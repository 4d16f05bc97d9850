//! Token and position embeddings (shaders/embedding.wgsl): a gather forward (from an f32
//! table, or from a compact frozen one through the dequantizers of shaders/quant.wgsl),
//! and a deterministic, atomic-free scatter-add backward driven by a host-built grouping
//! of rows by id.

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

/// The rows of a batch grouped by id, in CSR form: the rows holding `uniq[u]` are
/// `rows[starts[u]..starts[u + 1]]`, ascending. Built once per batch on the host (the ids
/// come from the host anyway) and shared by every backward that uses the same ids.
pub struct GroupIndex {
    /// u32 (U): the distinct ids, ascending.
    pub uniq: Tensor,
    /// u32 (U + 1): offsets into `rows`.
    pub starts: Tensor,
    /// u32 (n): row indices grouped by id.
    pub rows: Tensor,
    pub n_uniq: usize,
    pub n: usize,
}

impl GroupIndex {
    pub fn build(gpu: &Gpu, ids: &[u32]) -> Result<GroupIndex> {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        // Stable, so rows stay ascending within an id: the GPU's sum order, and so its
        // rounding, depends only on the batch.
        order.sort_by_key(|&r| ids[r as usize]);
        let mut uniq = Vec::new();
        let mut starts = Vec::new();
        for (k, &r) in order.iter().enumerate() {
            let id = ids[r as usize];
            if uniq.last() != Some(&id) {
                uniq.push(id);
                starts.push(k as u32);
            }
        }
        starts.push(ids.len() as u32);
        Ok(GroupIndex {
            uniq: gpu.upload_u32("embedding.uniq", &uniq)?,
            starts: gpu.upload_u32("embedding.starts", &starts)?,
            rows: gpu.upload_u32("embedding.rows", &order)?,
            n_uniq: uniq.len(),
            n: ids.len(),
        })
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
    let c = wte.cols;
    debug_assert!(ids.len >= rows && out.len >= rows * c);
    let dummy = &enc.gpu().dummy.clone();
    let (pos_ids, wpe) = pos.unwrap_or((dummy, dummy));
    // No scale: the compact gather serves models that do not scale their embeddings
    // (Gemma 3's sqrt(C) is not on this path yet).
    let flags = if pos.is_some() { HAS_POS } else { 0 };
    let p = Params { rows: rows as u32, c: c as u32, flags, n_uniq: 0, scale: 1.0, _pad: [0; 3] };
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
/// Always accumulates (gradient accumulation over micro-batches). Deterministic.
pub fn backward(enc: &mut Encoder, index: &GroupIndex, dout: &Tensor, dw: &Tensor, c: usize) {
    backward_scaled(enc, index, dout, 1.0, dw, c)
}

/// `backward` of `forward_scaled`: dw += for each id, the sum of its dout rows * scale.
pub fn backward_scaled(enc: &mut Encoder, index: &GroupIndex, dout: &Tensor, scale: f32, dw: &Tensor, c: usize) {
    if index.n_uniq == 0 {
        return;
    }
    let (rows, n_uniq) = (index.n as u32, index.n_uniq as u32);
    let p = Params { rows, c: c as u32, flags: 0, n_uniq, scale, _pad: [0; 3] };
    let (n, u, c64) = (index.n as u64, index.n_uniq as u64, c as u64);
    let cost = Cost { flops: n * c64, bytes: 4 * (n * c64 + 2 * u * c64 + n + 2 * u + 1) };
    enc.dispatch(
        &EMBEDDING,
        "embedding_backward",
        &p,
        &[Arg::R(&index.uniq), Arg::R(&index.starts), Arg::R(&index.rows), Arg::R(dout), Arg::W(dw)],
        grid_1d(index.n_uniq, 1),
        cost,
    );
}
