//! webtune: fine-tune small language models on the GPU through wgpu, in the browser
//! (WebGPU) and natively (Vulkan/Metal/DX12) with the same WGSL kernels.
//!
//! Shape legend used in comments throughout: B batch, T time (sequence), C channels
//! (hidden size), V vocabulary, H attention heads, Hk key/value heads, D head size,
//! F feed-forward size, R LoRA rank, N rows that carry loss.

pub mod data;
pub mod error;
pub mod export;
pub mod gpu;
pub mod load;
pub mod model;
pub mod ops;
pub mod rng;
pub mod session;
pub mod tokenize;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
