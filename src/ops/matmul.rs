//! Matrix multiply (shaders/matmul.wgsl) and the Linear / Conv1D layers built on it.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Kernel, Tensor, ACCUMULATE, WG};
use crate::load::compact::{CompactFormat, QUANT_INCLUDES};
use crate::ops::dequant::CompactWeight;

const HAS_BIAS: u32 = 2;
const HAS_RESID: u32 = 4;
const HAS_LORA: u32 = 8;
const LORA_BT: u32 = 16;
const SWIGLU_FWD: u32 = 32;
const SWIGLU_BWD: u32 = 64;

const SOURCE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/matmul.wgsl"));
const SUBGROUP_SOURCE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/matmul_subgroup.wgsl"));
/// The large kernel's workgroup tiles hold `tile_t` (shaders/matmul.wgsl): f32, or f16 in
/// the shader-f16 variant (`Variant::LargeH`), whose module opens with `enable f16;`.
const INCLUDES: &[&str] = &[QUANT_INCLUDES[0], QUANT_INCLUDES[1], "alias tile_t = f32;\n"];
const INCLUDES_H: &[&str] = &[QUANT_INCLUDES[0], QUANT_INCLUDES[1], "alias tile_t = f16;\n"];
/// The subgroup module: matmul.wgsl, then shaders/matmul_subgroup.wgsl's entry point.
const INCLUDES_SG: &[&str] = &[QUANT_INCLUDES[0], QUANT_INCLUDES[1], "alias tile_t = f32;\n", SOURCE];

/// WebGPU's compiler (Tint, in the browser) wants `enable subgroups;`; naga (natively) has
/// subgroups without it and rejects the directive.
const ENABLE_SUBGROUPS: &str = if cfg!(target_arch = "wasm32") { "enable subgroups;" } else { "" };

/// What a matmul module holds beyond the f32 kernels every adapter runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Module {
    F32,
    /// f16 workgroup tiles (`Variant::LargeH`).
    F16,
    /// The skinny kernel's subgroup reduction (`Variant::SkinnySg`, `SkinnyTSg`).
    Subgroups,
}

impl Module {
    /// (name suffix, file, includes, enable directives)
    const fn parts(self) -> (&'static str, &'static str, &'static [&'static str], &'static str) {
        match self {
            Module::F32 => ("", SOURCE, INCLUDES, ""),
            Module::F16 => (".h", SOURCE, INCLUDES_H, "enable f16;"),
            Module::Subgroups => (".sg", SUBGROUP_SOURCE, INCLUDES_SG, ENABLE_SUBGROUPS),
        }
    }
}

/// shaders/matmul.wgsl with every operand stored as is (the file as a whole, for the
/// compile tests; products run through `layout_kernel`).
pub const MATMUL: Kernel = Kernel {
    name: "matmul",
    file: SOURCE,
    consts: &[
        ("HAS_BIAS", HAS_BIAS),
        ("HAS_RESID", HAS_RESID),
        ("HAS_LORA", HAS_LORA),
        ("LORA_BT", LORA_BT),
        ("SWIGLU_FWD", SWIGLU_FWD),
        ("SWIGLU_BWD", SWIGLU_BWD),
        ("A_T", 0),
        ("B_T", 0),
        ("C_T", 0),
        ("WFMT", CompactFormat::F32 as u32),
    ],
    includes: INCLUDES,
    enable: "",
};

/// The same file with f16 tiles (`Variant::LargeH`), for the compile test of adapters that
/// have shader-f16.
pub const MATMUL_F16: Kernel = module_kernel("matmul.h", Module::F16);
/// The subgroup module (`Variant::SkinnySg`), for the compile test of adapters with subgroups.
pub const MATMUL_SUBGROUP: Kernel = module_kernel("matmul.sg", Module::Subgroups);

/// `MATMUL` as the module `module` builds it.
const fn module_kernel(name: &'static str, module: Module) -> Kernel {
    let (_, file, includes, enable) = module.parts();
    Kernel { name, file, includes, enable, ..MATMUL }
}

/// The kernel file specialized to one layout: A stored transposed (`a_t`), B stored
/// transposed (`b_t`), C written transposed (`c_t`), B's format, and what the module holds
/// beyond the f32 kernels (`module`). Made on first use.
fn layout_kernel(a_t: bool, b_t: bool, c_t: bool, b_format: CompactFormat, module: Module) -> &'static Kernel {
    const N: usize = 3 * 8 * CompactFormat::ALL.len();
    static KERNELS: [OnceLock<Kernel>; N] = [const { OnceLock::new() }; N];
    let layout = (module as usize) << 3 | (a_t as usize) << 2 | (b_t as usize) << 1 | c_t as usize;
    KERNELS[layout * CompactFormat::ALL.len() + b_format.code() as usize].get_or_init(|| {
        let (suffix, file, includes, enable) = module.parts();
        let t = |x: bool| if x { 'T' } else { 'N' };
        let name = format!("matmul.{}{}{}{suffix}", t(a_t), t(b_t), t(c_t));
        let name = if b_format == CompactFormat::F32 { name } else { format!("{name}@{}", b_format.name()) };
        let consts = vec![
            ("HAS_BIAS", HAS_BIAS),
            ("HAS_RESID", HAS_RESID),
            ("HAS_LORA", HAS_LORA),
            ("LORA_BT", LORA_BT),
            ("SWIGLU_FWD", SWIGLU_FWD),
            ("SWIGLU_BWD", SWIGLU_BWD),
            ("A_T", a_t as u32),
            ("B_T", b_t as u32),
            ("C_T", c_t as u32),
            ("WFMT", b_format.code()),
        ];
        // The name and constants are leaked once per specialization (264 at most): a
        // kernel's fields are 'static, like the pipeline cache that keys on them.
        Kernel { name: Box::leak(name.into_boxed_str()), file, consts: consts.leak(), includes, enable }
    })
}

/// A weight operand: f32 values, or a frozen matrix kept compact on the GPU (read through
/// the in-kernel dequantizers; only ever the B operand, and never given a gradient).
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    F32(&'a Tensor),
    Compact(&'a CompactWeight),
}

impl<'a> From<&'a Tensor> for Weight<'a> {
    fn from(t: &'a Tensor) -> Self {
        Weight::F32(t)
    }
}

impl<'a> From<&'a CompactWeight> for Weight<'a> {
    fn from(c: &'a CompactWeight) -> Self {
        Weight::Compact(c)
    }
}

impl<'a> Weight<'a> {
    fn parts(self) -> (&'a Tensor, CompactFormat) {
        match self {
            Weight::F32(t) => (t, CompactFormat::F32),
            Weight::Compact(c) => (&c.words, c.format),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    /// R of the fused LoRA epilogue.
    r: u32,
    /// k per workgroup along z (split-K, `KSplit`); at least K when unsplit.
    ksplit: u32,
    /// Scale of the product: C = alpha * op(A) op(B) [+ ...]. 1.0 is exact (x * 1 == x).
    alpha: f32,
    /// s of the fused LoRA epilogue.
    lora_scale: f32,
}

/// How an operand is stored: as the matrix itself (row-major) or as its transpose.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    N,
    T,
}

/// The entry points of the matmul family (shaders/matmul.wgsl).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// 128 x 64 workgroup tiles, 8 x 4 outputs per thread, register-staged double buffer.
    Large,
    /// `Large` with f16 tiles (operands rounded to f16, products summed in f32): adapters
    /// with shader-f16 only, and only when turned on (`WEBTUNE_F16=1`).
    LargeH,
    /// 64 x 64 workgroup tiles, 4 x 4 outputs per thread.
    Tiled,
    /// N <= 16: K split across the threads of a row, added in a fixed tree order.
    Skinny,
    /// M <= 16: the skinny kernel on the transposed product, C written transposed.
    SkinnyT,
    /// `Skinny` and `SkinnyT` with the slices added through subgroup shuffles in the same
    /// tree order (the same bits): devices with subgroups, when on (`WEBTUNE_SUBGROUPS=1`).
    SkinnySg,
    SkinnyTSg,
    /// One thread per output, K walked serially.
    Dot,
    /// 64 x 64 register blocks straight from global memory (CPU adapters).
    Reg,
    /// `Reg` with every operand read as vec4s: where the layout's vec4s are whole
    /// (`vec4_fits`).
    Reg4,
}

impl Variant {
    fn entry(self, b_format: CompactFormat) -> &'static str {
        match self {
            Variant::Reg4 if b_format != CompactFormat::F32 => "matmul_reg4q",
            Variant::Large | Variant::LargeH => "matmul_large",
            Variant::Tiled => "matmul_tiled",
            Variant::Skinny | Variant::SkinnyT => "matmul_skinny",
            Variant::SkinnySg | Variant::SkinnyTSg => "matmul_skinny_sg",
            Variant::Dot => "matmul_dot",
            Variant::Reg => "matmul_reg",
            Variant::Reg4 => "matmul_reg4",
        }
    }

    fn module(self) -> Module {
        match self {
            Variant::LargeH => Module::F16,
            Variant::SkinnySg | Variant::SkinnyTSg => Module::Subgroups,
            _ => Module::F32,
        }
    }

    /// The skinny kernels: K split per row, so not the k-order bits of the others.
    pub fn splits_k(self) -> bool {
        matches!(self, Variant::Skinny | Variant::SkinnyT | Variant::SkinnySg | Variant::SkinnyTSg)
    }

    /// The product computed transposed (C^T = op(B)^T op(A)^T, C written transposed).
    fn transposed(self) -> bool {
        matches!(self, Variant::SkinnyT | Variant::SkinnyTSg)
    }

    /// The kernels that take a range of k per workgroup along z (`KSplit`).
    pub fn splits_across_workgroups(self) -> bool {
        matches!(self, Variant::Large | Variant::LargeH | Variant::Tiled) || self.splits_k()
    }
}

/// At most this many rows go through `Variant::Dot` (generation's new tokens).
pub const SMALL_M: usize = 4;
/// The widest output the skinny kernel holds per thread (`S_N` in the shader).
pub const SKINNY: usize = 16;
/// Tiles of 128 x 64 a product needs before the large kernel pays: enough workgroups to
/// give each compute unit of a 100+ CU GPU about one (fewer, and 64 x 64 tiles keep more
/// of the GPU busy).
const LARGE_TILES: usize = 96;

/// Workgroups a product split across workgroups aims for: two per compute unit of a GPU of
/// 128 CUs (a workgroup of 256 threads keeps a quarter of an NVIDIA SM or AMD CU busy).
pub const SPLIT_FILL: usize = 256;
/// The least k one range of a split product walks: its partial's extra store and reload
/// (8 M N bytes over all ranges) stay a small share beside its operands' reads (Tiled: 4 K
/// (M + N) bytes per 64 x 64 tile, so a range of 1024 reads 128x more than it stores).
pub const SPLIT_MIN_K: usize = 1024;

/// Split-K across workgroups: K cut into `ranges` ranges of k, each range's partial
/// product (alpha applied) written by its own workgroups into `scratch` (ranges x M x N
/// f32s), and the partials then added in range order into C (the two-stage reduction of
/// ops::bias::finish: deterministic, and each row's bits independent of M). For products
/// whose M x N gives too few tiles to fill a GPU while K is long: the LM head's input
/// gradient per chunk (K = V). `k_ranges` chooses `ranges`; products with a bias, resid,
/// LoRA or SwiGLU epilogue, and kernels other than the k-order tiles (Large, Tiled), run
/// unsplit.
#[derive(Clone, Copy)]
pub struct KSplit<'a> {
    pub scratch: &'a Tensor,
    pub ranges: usize,
}

/// How many ranges of k `KSplit` cuts an (m, n, k) product into on this adapter (`split_k`
/// as for `choose`): 1 (unsplit) on CPU adapters, whose few cores the unsplit tiles
/// already fill, and where the product's own workgroups reach SPLIT_FILL; otherwise enough
/// ranges for about SPLIT_FILL workgroups, each at least SPLIT_MIN_K long. M counts only
/// through the workgroup count: a caller that wants the same bits for any number of rows
/// (the chunked LM head) asks once, at a fixed M, and passes the answer for every chunk.
pub fn k_ranges(adapter: Adapter, (m, n, k): (usize, usize, usize), split_k: bool) -> usize {
    if adapter.cpu {
        return 1;
    }
    // The unsplit product's workgroups (Dot: what a split product runs instead, Tiled).
    let v = choose(adapter, (m, n, k), (Op::N, Op::N), split_k);
    let workgroups = match v {
        Variant::Large | Variant::LargeH => m.div_ceil(128) * n.div_ceil(64),
        Variant::Tiled | Variant::Dot => m.div_ceil(64) * n.div_ceil(64),
        _ if v.transposed() => n.div_ceil(16),
        _ if v.splits_k() => m.div_ceil(16),
        _ => return 1,
    };
    SPLIT_FILL.div_ceil(workgroups).min(k / SPLIT_MIN_K).max(1)
}

/// A product whose depth K is the micro-batch's rows: a weight gradient (full fine-tuning's
/// dW, LoRA's dA with `split_k` and dB), as the workspace sizes the scratch that splits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowProduct {
    pub m: usize,
    pub n: usize,
    pub split_k: bool,
}

impl RowProduct {
    /// f32s of scratch its split over `rows` rows takes on a GPU (0: unsplit). Sized for
    /// `Adapter::GPU`, so a workspace holds the same bytes on any adapter.
    pub fn scratch(&self, rows: usize) -> usize {
        match k_ranges(Adapter::GPU, (self.m, self.n, rows), self.split_k) {
            1 => 0,
            ranges => ranges * self.m * self.n,
        }
    }

    /// The split of this product over `rows` rows through `scratch` on this adapter.
    pub fn split<'a>(&self, adapter: Adapter, rows: usize, scratch: &'a Tensor) -> KSplit<'a> {
        KSplit { scratch, ranges: k_ranges(adapter, (self.m, self.n, rows), self.split_k) }
    }
}

/// Which column of `choose`'s table to read, and the optional extras turned on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Adapter {
    /// A CPU rasterizer (lavapipe, SwiftShader): barriers are costly, "workgroup memory" is
    /// ordinary memory, a handful of cores.
    pub cpu: bool,
    /// f16 workgroup tiles (`Gpu::matmul_f16`).
    pub f16: bool,
    /// The skinny kernels' subgroup reduction (`Gpu::matmul_subgroups`).
    pub subgroups: bool,
}

impl Adapter {
    pub const GPU: Adapter = Adapter { cpu: false, f16: false, subgroups: false };
    pub const CPU: Adapter = Adapter { cpu: true, ..Adapter::GPU };

    /// The column and extras of this device.
    pub fn of(g: &crate::gpu::Gpu) -> Adapter {
        Adapter { cpu: g.matmul_cpu, f16: g.matmul_f16, subgroups: g.matmul_subgroups }
    }
}

/// The one table that picks a matmul kernel, from the product's shape and the adapter.
/// `split_k`: the caller lets K be split across threads although M is small (LoRA's dA,
/// whose M is the rank). Other products with few rows keep the k order, so that a product
/// gives the same bits whatever rows it is run with (a chunked LM head, micro-batches, a
/// LoRA model at step 0 against its base).
///
/// | shape (M x N, depth K)              | GPU       | GPU, extra on          | CPU adapter |
/// |-------------------------------------|-----------|------------------------|-------------|
/// | K = 0, or M <= 4                    | Dot       | Dot                    | Dot         |
/// | N <= 16 (LoRA u, g, dB)             | Skinny    | SkinnySg (subgroups)   | Dot         |
/// | M <= 16 and `split_k` (LoRA dA)     | SkinnyT   | SkinnyTSg (subgroups)  | Dot         |
/// | M <= 16                             | Dot       | Dot                    | Dot         |
/// | >= 96 tiles of 128 x 64             | Large     | LargeH (f16)           | Reg4 or Reg |
/// | otherwise                           | Tiled     | Tiled                  | Reg4 or Reg |
///
/// A product split across workgroups (`KSplit`, `k_ranges` > 1: GPUs only) runs the tile
/// kernel of its row, and Tiled where the table says Dot (a short last chunk of the LM
/// head), so that every chunk adds its k in the same ranges.
///
/// Every f32 kernel but the skinny ones sums over k in k order with fma, so they agree
/// bit for bit; the skinny kernels split K per row in a fixed order (deterministic, and
/// each row's result independent of the others), with or without subgroups. `LargeH` sums
/// the f16-rounded operands in k order. Both extras are off by default, as the issue asks,
/// until a GPU measurement turns them on.
///
/// The CPU column was measured on lavapipe (`webtune bench` on SmolLM2-135M LoRA: the
/// skinny kernel's barriers made its products 3x slower there than one thread per
/// output; `matmul_timing` in tests/ops/matmul.rs: vec4 loads, `Reg4` wherever
/// `vec4_fits`, ran SmolLM2's products several times faster than `Reg`); the GPU column follows the FLOP/byte counts on each kernel until a GPU
/// measurement says otherwise.
pub fn choose(adapter: Adapter, (m, n, k): (usize, usize, usize), ops: (Op, Op), split_k: bool) -> Variant {
    let (few_rows, few_cols) = (m <= SKINNY, n <= SKINNY);
    let a = adapter;
    match () {
        _ if k == 0 || m <= SMALL_M => Variant::Dot,
        _ if a.cpu && (few_cols || few_rows) => Variant::Dot,
        _ if a.cpu && vec4_fits((m, n, k), ops) => Variant::Reg4,
        _ if a.cpu => Variant::Reg,
        _ if few_cols && a.subgroups => Variant::SkinnySg,
        _ if few_cols => Variant::Skinny,
        _ if few_rows && split_k && a.subgroups => Variant::SkinnyTSg,
        _ if few_rows && split_k => Variant::SkinnyT,
        _ if few_rows => Variant::Dot,
        _ if m.div_ceil(128) * n.div_ceil(64) < LARGE_TILES => Variant::Tiled,
        _ if a.f16 => Variant::LargeH,
        _ => Variant::Large,
    }
}

/// Whether `Variant::Reg4` can read this product's operands as whole, aligned vec4s: along
/// k for a k-contiguous A (x . W^T, dy . W: K % 4 == 0) and a transposed B, across the
/// columns for a row-major B (N % 4 == 0), across the rows for a transposed A (dy^T . x:
/// M % 4 == 0). Both operands transposed is not a layout of a linear layer; it stays with
/// `Reg`. (Every tensor binding starts on a 256-byte boundary, so row starts that are
/// multiples of 4 values are 16-byte aligned.)
pub fn vec4_fits((m, n, k): (usize, usize, usize), ops: (Op, Op)) -> bool {
    match ops {
        (Op::N, Op::T) => k % 4 == 0,
        (Op::N, Op::N) => k % 4 == 0 && n % 4 == 0,
        (Op::T, Op::N) => m % 4 == 0 && n % 4 == 0,
        (Op::T, Op::T) => false,
    }
}

/// LoRA's product fused into a base product's epilogue: C += s * U(M,R) . LB(N,R)^T
/// (the forward's s * u B^T), or C += s * U(M,R) . LB(R,N) (the input gradient's s * g A).
#[derive(Clone, Copy)]
pub struct LoraEpilogue<'a> {
    /// (M, R)
    pub u: &'a Tensor,
    /// (N, R), or (R, N) when `b_t`
    pub b: &'a Tensor,
    pub b_t: bool,
    pub rank: usize,
    pub scale: f32,
}

/// A gated MLP's SwiGLU fused into the epilogue of a product (common.wgsl's arithmetic, the
/// bits of `ops::swiglu`). Not with bias, resid, accumulation or a transposed C.
#[derive(Clone, Copy)]
pub enum SwigluEpilogue<'a> {
    /// The up projection: C(M,N) = up as usual, and act(M,N) = silu(gate) * up.
    Forward { gate: &'a Tensor, act: &'a Tensor },
    /// The down projection's input gradient: the product is dact; C(M,N) receives dgate =
    /// dact * up * silu'(gate), and dup(M,N) = dact * silu(gate).
    Backward { gate: &'a Tensor, up: &'a Tensor, dup: &'a Tensor },
}

/// A product's optional extras, all applied in the one epilogue of every kernel.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    /// (N), added to every row.
    pub bias: Option<&'a Tensor>,
    /// (M, N), added.
    pub resid: Option<&'a Tensor>,
    pub lora: Option<LoraEpilogue<'a>>,
    /// K may be split across threads although M is small (see `choose`).
    pub split_k: bool,
    /// B's format when it is a compact weight's words (None: f32).
    pub b_format: Option<CompactFormat>,
    pub swiglu: Option<SwigluEpilogue<'a>>,
    /// K split across workgroups, when the product has no other epilogue (see `KSplit`).
    pub k_split: Option<KSplit<'a>>,
}

impl Extras<'_> {
    /// Whether the epilogue is no more than alpha and accumulation.
    fn plain(&self) -> bool {
        self.bias.is_none() && self.resid.is_none() && self.lora.is_none() && self.swiglu.is_none()
    }
}

/// C(M,N) = op(A)(M,K) . op(B)(K,N) [+ bias(N)] [+ resid(M,N)], added into C when
/// `accumulate`. op(A) = A stored (M,K) for `Op::N`, or stored (K,M) for `Op::T`.
pub fn matmul(
    enc: &mut Encoder,
    mnk: (usize, usize, usize),
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    bias: Option<&Tensor>,
    resid: Option<&Tensor>,
    c: &Tensor,
    accumulate: bool,
) {
    let ex = Extras { bias, resid, lora: None, ..Default::default() };
    matmul_ex(enc, mnk, 1.0, a, a_op, b, b_op, ex, c, accumulate)
}

/// C(M,N) = alpha * op(A) . op(B) [+ bias] [+ resid] [+ C]: `matmul` with the product
/// scaled (LoRA's s * u B^T and its gradients), in the same dispatch.
pub fn matmul_scaled(
    enc: &mut Encoder,
    mnk: (usize, usize, usize),
    alpha: f32,
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    bias: Option<&Tensor>,
    resid: Option<&Tensor>,
    c: &Tensor,
    accumulate: bool,
) {
    matmul_ex(
        enc,
        mnk,
        alpha,
        a,
        a_op,
        b,
        b_op,
        Extras { bias, resid, lora: None, ..Default::default() },
        c,
        accumulate,
    )
}

/// The general product, with the kernel from `choose`'s table for this adapter.
pub fn matmul_ex(
    enc: &mut Encoder,
    mnk: (usize, usize, usize),
    alpha: f32,
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    ex: Extras,
    c: &Tensor,
    accumulate: bool,
) {
    let v = choose(Adapter::of(enc.gpu()), mnk, (a_op, b_op), ex.split_k && ex.bias.is_none() && ex.lora.is_none());
    let v = match v {
        Variant::Dot if ex.k_split.is_some_and(|s| s.ranges > 1) && ex.plain() => Variant::Tiled,
        v => v,
    };
    matmul_variant(enc, v, mnk, alpha, a, a_op, b, b_op, ex, c, accumulate)
}

/// `matmul_ex` with an explicit kernel (tests run every variant on every shape).
pub fn matmul_variant(
    enc: &mut Encoder,
    variant: Variant,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: &Tensor,
    a_op: Op,
    b: &Tensor,
    b_op: Op,
    ex: Extras,
    c: &Tensor,
    accumulate: bool,
) {
    let b_format = ex.b_format.unwrap_or(CompactFormat::F32);
    debug_assert!(a.len >= m * k && c.len >= m * n);
    debug_assert!(b_format != CompactFormat::F32 || b.len >= k * n);
    debug_assert!(!variant.transposed() || b_format == CompactFormat::F32, "a compact weight is B, never A");
    debug_assert!(variant != Variant::Reg4 || vec4_fits((m, n, k), (a_op, b_op)), "Reg4 needs whole vec4s");
    if let Some(l) = &ex.lora {
        debug_assert!(l.u.len >= m * l.rank && l.b.len >= n * l.rank);
    }
    let flags = if accumulate { ACCUMULATE } else { 0 }
        | if ex.bias.is_some() { HAS_BIAS } else { 0 }
        | if ex.resid.is_some() { HAS_RESID } else { 0 }
        | if ex.lora.is_some() { HAS_LORA } else { 0 }
        | if ex.lora.is_some_and(|l| l.b_t) { LORA_BT } else { 0 }
        | match ex.swiglu {
            Some(SwigluEpilogue::Forward { .. }) => SWIGLU_FWD,
            Some(SwigluEpilogue::Backward { .. }) => SWIGLU_BWD,
            None => 0,
        };
    let (m64, n64, k64) = (m as u64, n as u64, k as u64);
    let r64 = ex.lora.map_or(0, |l| l.rank as u64);
    let out_bytes = 4 * m64 * n64 * (1 + accumulate as u64 + ex.resid.is_some() as u64);
    let lora_bytes = 4 * r64 * (m64 + n64);
    let operand = |tiles_m: u64, tiles_n: u64| 4 * (m64 * k64 * tiles_n + k64 * n64 * tiles_m);
    // The transposed skinny product swaps the operands: C^T(N,M) = op(B)^T . op(A)^T.
    let (rows, cols, first, first_t, second, second_t, c_t) = match variant.transposed() {
        true => (n, m, b, b_op == Op::N, a, a_op == Op::N, true),
        false => (m, n, a, a_op == Op::T, b, b_op == Op::T, false),
    };
    debug_assert!(
        !c_t || (ex.bias.is_none() && ex.lora.is_none() && ex.swiglu.is_none()),
        "the transposed product has no bias, LoRA or SwiGLU epilogue"
    );
    debug_assert!(
        ex.swiglu.is_none() || (ex.bias.is_none() && ex.resid.is_none() && !accumulate),
        "the SwiGLU epilogue reads its operands through the bias and resid bindings"
    );
    debug_assert!(!variant.splits_k() || cols <= SKINNY);
    // Split-K: the first dispatch writes each range's partial into the scratch, the second
    // adds them into C.
    let split = ex
        .k_split
        .filter(|s| s.ranges > 1 && variant.splits_across_workgroups() && ex.plain())
        .map(|s| (s.scratch, k.div_ceil(s.ranges).next_multiple_of(16)))
        .filter(|&(_, ksplit)| ksplit < k);
    let (ksplit, ranges) = split.map_or((k.max(1), 1), |(_, ksplit)| (ksplit, k.div_ceil(ksplit)));
    let c_out = c;
    let (c, flags, out_bytes) = match split {
        Some((scratch, _)) => {
            debug_assert!(scratch.len >= ranges * m * n, "a split product's scratch holds ranges x M x N");
            (scratch, 0, 4 * ranges as u64 * m64 * n64)
        }
        None => (c, flags, out_bytes),
    };
    let (grid, bytes) = match variant {
        Variant::Large | Variant::LargeH => (
            [n.div_ceil(64) as u32, m.div_ceil(128) as u32, ranges as u32],
            operand(m64.div_ceil(128), n64.div_ceil(64)),
        ),
        Variant::Tiled => {
            ([n.div_ceil(64) as u32, m.div_ceil(64) as u32, ranges as u32], operand(m64.div_ceil(64), n64.div_ceil(64)))
        }
        Variant::Reg | Variant::Reg4 => {
            ([n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1], operand(m64.div_ceil(64), n64.div_ceil(64)))
        }
        Variant::Skinny | Variant::SkinnyT | Variant::SkinnySg | Variant::SkinnyTSg => {
            let groups = rows.div_ceil(16);
            ([groups as u32, 1, ranges as u32], 4 * (rows as u64 * k64 + groups as u64 * k64 * cols as u64))
        }
        Variant::Dot => (grid_1d(m * n, WG), 4 * (m64 * k64 + k64 * n64)),
    };
    let p = Params {
        m: rows as u32,
        n: cols as u32,
        k: k as u32,
        flags,
        r: r64 as u32,
        ksplit: ksplit as u32,
        alpha,
        lora_scale: ex.lora.map_or(0.0, |l| l.scale),
    };
    // SwiGLU: ~6 (forward) or ~12 (backward) FLOPs and 2 or 3 more (M, N) tensors.
    let (glu_flops, glu_bytes) = match ex.swiglu {
        Some(SwigluEpilogue::Forward { .. }) => (6, 8),
        Some(SwigluEpilogue::Backward { .. }) => (12, 12),
        None => (0, 0),
    };
    let cost = Cost {
        flops: 2 * m64 * n64 * (k64 + r64) + glu_flops * m64 * n64,
        bytes: bytes + out_bytes + lora_bytes + glu_bytes * m64 * n64,
    };
    let dummy = &enc.gpu().dummy.clone();
    let kernel = layout_kernel(first_t, second_t, c_t, b_format, variant.module());
    // The SwiGLU operands ride in the bias and resid bindings (see shaders/matmul.wgsl);
    // without one, c2 is unused (the dummy: a spare of its own, never C, since WebGPU
    // rejects two writable bindings of one buffer).
    let (bias, resid, c2) = match ex.swiglu {
        Some(SwigluEpilogue::Forward { gate, act }) => (dummy, gate, act),
        Some(SwigluEpilogue::Backward { gate, up, dup }) => (up, gate, dup),
        None => (ex.bias.unwrap_or(dummy), ex.resid.unwrap_or(dummy), dummy),
    };
    let args = [
        Arg::R(first),
        Arg::R(second),
        Arg::R(bias),
        Arg::R(resid),
        Arg::W(c),
        Arg::R(ex.lora.map_or(dummy, |l| l.u)),
        Arg::R(ex.lora.map_or(dummy, |l| l.b)),
        Arg::W(c2),
    ];
    enc.dispatch(kernel, variant.entry(b_format), &p, &args, grid, cost);
    if let Some((scratch, _)) = split {
        crate::ops::bias::finish(enc, scratch, ranges, m * n, c_out, accumulate);
    }
}

/// How a weight matrix is stored: Hugging Face `nn.Linear` keeps (out, in); GPT-2's
/// `Conv1D` keeps (in, out).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WeightLayout {
    OutIn,
    InOut,
}

/// A linear layer's shape: `rows` inputs of `fan_in` features to `fan_out` features.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub rows: usize,
    pub fan_in: usize,
    pub fan_out: usize,
    pub layout: WeightLayout,
}

impl Linear {
    /// y(rows, out) = x(rows, in) . W [+ b] [+ resid]; added into y when `accumulate`.
    pub fn forward<'w>(
        &self,
        enc: &mut Encoder,
        x: &Tensor,
        w: impl Into<Weight<'w>>,
        b: Option<&Tensor>,
        resid: Option<&Tensor>,
        y: &Tensor,
        accumulate: bool,
    ) {
        self.forward_ex(enc, x, w, Extras { bias: b, resid, ..Default::default() }, y, accumulate)
    }

    /// `forward` with every extra of the epilogue (a LoRA adapter's s * u B^T included).
    pub fn forward_ex<'w>(
        &self,
        enc: &mut Encoder,
        x: &Tensor,
        w: impl Into<Weight<'w>>,
        ex: Extras,
        y: &Tensor,
        accumulate: bool,
    ) {
        let w_op = match self.layout {
            WeightLayout::OutIn => Op::T,
            WeightLayout::InOut => Op::N,
        };
        let (w, format) = w.into().parts();
        let ex = Extras { b_format: Some(format), ..ex };
        matmul_ex(enc, (self.rows, self.fan_out, self.fan_in), 1.0, x, Op::N, w, w_op, ex, y, accumulate);
    }

    /// dx(rows, in) [+]= dy . W^T. `accumulate` adds into dx (a residual branch's gradient).
    pub fn backward_input<'w>(
        &self,
        enc: &mut Encoder,
        dy: &Tensor,
        w: impl Into<Weight<'w>>,
        dx: &Tensor,
        accumulate: bool,
    ) {
        self.backward_input_ex(enc, dy, w, None, dx, accumulate)
    }

    /// `backward_input` with a LoRA adapter's share (s * g A) in the same dispatch.
    pub fn backward_input_ex<'w>(
        &self,
        enc: &mut Encoder,
        dy: &Tensor,
        w: impl Into<Weight<'w>>,
        lora: Option<LoraEpilogue>,
        dx: &Tensor,
        accumulate: bool,
    ) {
        self.backward_input_with(enc, dy, w, Extras { lora, ..Default::default() }, dx, accumulate);
    }

    /// `backward_input` with the epilogue's extras (`ex.lora`: the adapter's s * g A;
    /// `ex.swiglu`: a gated MLP's SwiGLU backward after the down projection, dx then
    /// receiving dgate).
    pub fn backward_input_with<'w>(
        &self,
        enc: &mut Encoder,
        dy: &Tensor,
        w: impl Into<Weight<'w>>,
        ex: Extras,
        dx: &Tensor,
        accumulate: bool,
    ) {
        let w_op = match self.layout {
            WeightLayout::OutIn => Op::N,
            WeightLayout::InOut => Op::T,
        };
        let (w, format) = w.into().parts();
        let ex = Extras { b_format: Some(format), ..ex };
        matmul_ex(enc, (self.rows, self.fan_in, self.fan_out), 1.0, dy, Op::N, w, w_op, ex, dx, accumulate);
    }

    /// The weight gradient's product, (M, N) of dy^T . x for (out, in), x^T . dy for
    /// (in, out); K = rows.
    pub fn weight_grad(&self) -> RowProduct {
        let (m, n) = match self.layout {
            WeightLayout::OutIn => (self.fan_out, self.fan_in),
            WeightLayout::InOut => (self.fan_in, self.fan_out),
        };
        RowProduct { m, n, split_k: false }
    }

    /// dW += the weight gradient in the weight's own layout (always accumulated, so
    /// micro-batches add up), and db += column sums of dy. With `scratch`
    /// (`weight_grad().scratch(rows)` f32s), K = rows is split across workgroups where
    /// `k_ranges` says so (a GPU, few tiles, many rows).
    pub fn backward_weight(
        &self,
        enc: &mut Encoder,
        dy: &Tensor,
        x: &Tensor,
        dw: &Tensor,
        db: Option<&Tensor>,
        scratch: Option<&Tensor>,
    ) {
        let p = self.weight_grad();
        let mnk = (p.m, p.n, self.rows);
        let k_split = scratch.map(|s| p.split(Adapter::of(enc.gpu()), self.rows, s));
        let ex = Extras { k_split, ..Default::default() };
        match self.layout {
            // dW(out, in) += dy^T(out, rows) . x(rows, in)
            WeightLayout::OutIn => matmul_ex(enc, mnk, 1.0, dy, Op::T, x, Op::N, ex, dw, true),
            // dW(in, out) += x^T(in, rows) . dy(rows, out)
            WeightLayout::InOut => matmul_ex(enc, mnk, 1.0, x, Op::T, dy, Op::N, ex, dw, true),
        }
        if let Some(db) = db {
            crate::ops::bias::backward(enc, self.rows, self.fan_out, dy, db, None, true);
        }
    }
}
