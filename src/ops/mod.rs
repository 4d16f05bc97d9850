//! The Rust side of each WGSL kernel: a params struct, and forward/backward launchers
//! with the same argument names as the shader. One file per `shaders/<op>.wgsl`.

pub mod attention;
pub mod matmul;
pub mod rope;
