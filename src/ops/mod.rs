//! The Rust side of each WGSL kernel: a params struct, and forward/backward launchers
//! with the same argument names as the shader. One file per `shaders/<op>.wgsl`.

pub mod adamw;
pub mod attention;
pub mod bias;
pub mod copy2d;
pub mod cross_entropy;
pub mod dequant;
pub mod dropout;
pub mod embedding;
pub mod fill;
pub mod gather;
pub mod gelu;
pub mod grad_norm;
pub mod layernorm;
pub mod lora_grad;
pub mod lora_siblings;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod softcap;
pub mod swiglu;

/// Every kernel file, so a test can compile each one on every backend (naga natively,
/// Tint in the browser accept slightly different WGSL).
pub const KERNELS: &[&crate::gpu::Kernel] = &[
    &adamw::ADAMW,
    &attention::ATTENTION,
    &bias::BIAS,
    &copy2d::COPY2D,
    &cross_entropy::CROSS_ENTROPY,
    &dequant::DEQUANT[0],
    &dequant::DEQUANT[1],
    &dequant::DEQUANT[2],
    &dequant::DEQUANT[3],
    &dequant::DEQUANT[4],
    &dequant::DEQUANT[5],
    &dequant::DEQUANT[6],
    &dequant::DEQUANT[7],
    &dequant::DEQUANT[8],
    &dequant::DEQUANT[9],
    &dequant::DEQUANT[10],
    &dropout::DROPOUT,
    &embedding::EMBEDDING,
    &embedding::EMBEDDING_COMPACT[1],
    &embedding::EMBEDDING_COMPACT[2],
    &embedding::EMBEDDING_COMPACT[3],
    &embedding::EMBEDDING_COMPACT[4],
    &embedding::EMBEDDING_COMPACT[5],
    &embedding::EMBEDDING_COMPACT[6],
    &embedding::EMBEDDING_COMPACT[7],
    &embedding::EMBEDDING_COMPACT[8],
    &embedding::EMBEDDING_COMPACT[9],
    &embedding::EMBEDDING_COMPACT[10],
    &fill::FILL,
    &gather::GATHER,
    &gelu::GELU,
    &grad_norm::GRAD_NORM,
    &layernorm::LAYERNORM,
    &lora_grad::LORA_GRAD,
    &lora_siblings::LORA_SIBLINGS,
    &matmul::MATMUL,
    &rmsnorm::RMSNORM,
    &rope::ROPE,
    &softcap::SOFTCAP,
    &swiglu::SWIGLU,
];
