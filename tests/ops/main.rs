//! Every op's forward and backward on the GPU against the f64 reference in tests/reference,
//! on random inputs and awkward shapes. One binary, one device.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;
#[path = "../reference/mod.rs"]
mod reference;

mod adamw;
mod cross_entropy;
mod fill;
mod gather;
mod grad_norm;
mod matmul;
