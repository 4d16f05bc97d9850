//! Whole models against fixtures made by PyTorch + transformers in float64
//! (tests/fixtures/make_fixtures.py): logits, the loss in each mode, every parameter's
//! gradient, and the losses over 10 AdamW steps; plus the gradient-accumulation
//! equivalence and the non-finite guard.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;

mod compact;
mod fixture;
mod parity;
mod run;
mod training;
