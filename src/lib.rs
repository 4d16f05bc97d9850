//! webtune: fine-tune small language models on the GPU through wgpu, in the browser
//! (WebGPU) and natively (Vulkan/Metal/DX12) with the same WGSL kernels.
//!
//! Shape legend used in comments throughout: B batch, T time (sequence), C channels
//! (hidden size), V vocabulary, H attention heads, Hk key/value heads, D head size,
//! F feed-forward size, R LoRA rank, N rows that carry loss.
//!
//! Cargo feature `gpu` (on by default) is everything that needs wgpu: `gpu`, `ops`,
//! `export`, the browser bindings, the model on the GPU and its training. Without it the
//! crate is its host-side half, which the fuzz targets build: the safetensors and GGUF
//! parsers and dequantization ([`load`]), JSONL datasets ([`data`]), tokenizers and chat
//! templates ([`tokenize`]), model configurations and parameter specs ([`model`]) and
//! batch planning ([`train`]).

pub mod data;
pub mod error;
#[cfg(feature = "gpu")]
pub mod export;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod load;
pub mod model;
#[cfg(feature = "gpu")]
pub mod ops;
pub mod rng;
#[cfg(feature = "gpu")]
pub mod session;
pub mod tokenize;
pub mod train;
#[cfg(all(target_arch = "wasm32", feature = "gpu"))]
pub mod web;

pub use error::{Error, Result};
