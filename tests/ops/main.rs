//! Every op's forward and backward on the GPU against the f64 reference in tests/reference,
//! on random inputs and awkward shapes. One binary, one device.

#[path = "../common/mod.rs"]
mod common;
#[path = "../reference/mod.rs"]
mod reference;

mod attention;
mod matmul;
mod rope;
