//! The Rust side of each WGSL kernel: a params struct, and forward/backward launchers
//! with the same argument names as the shader. One file per `shaders/<op>.wgsl`.

pub mod adamw;
pub mod attention;
pub mod bias;
pub mod copy2d;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod fill;
pub mod gather;
pub mod gelu;
pub mod grad_norm;
pub mod layernorm;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

/// Every kernel file, so a test can compile each one on every backend (naga natively,
/// Tint in the browser accept slightly different WGSL).
pub const KERNELS: &[&crate::gpu::Kernel] = &[
    &adamw::ADAMW,
    &attention::ATTENTION,
    &bias::BIAS,
    &copy2d::COPY2D,
    &cross_entropy::CROSS_ENTROPY,
    &dropout::DROPOUT,
    &embedding::EMBEDDING,
    &fill::FILL,
    &gather::GATHER,
    &gelu::GELU,
    &grad_norm::GRAD_NORM,
    &layernorm::LAYERNORM,
    &matmul::MATMUL,
    &rmsnorm::RMSNORM,
    &rope::ROPE,
    &swiglu::SWIGLU,
];
