//! The Rust side of each WGSL kernel: a params struct, and forward/backward launchers
//! with the same argument names as the shader. One file per `shaders/<op>.wgsl`.

pub mod adamw;
pub mod attention;
pub mod copy2d;
pub mod cross_entropy;
pub mod embedding;
pub mod fill;
pub mod gather;
pub mod gelu;
pub mod grad_norm;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
