//! Every op's forward and backward on the GPU against the f64 reference in tests/reference,
//! on random inputs and awkward shapes. One binary, one device.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;
#[path = "../reference/mod.rs"]
mod reference;

mod adamw;
mod attention;
mod bias;
mod copy2d;
mod cross_entropy;
mod dequant;
mod dropout;
mod elementwise;
mod embedding;
mod fill;
mod gather;
mod gelu;
mod grad_norm;
mod layernorm;
mod lora_grad;
mod lora_siblings;
mod matmul;
mod rmsnorm;
mod rope;
mod softcap;
mod swiglu;

/// Every kernel file compiles under naga (the browser test does the same under Tint).
#[test]
fn every_kernel_compiles() {
    let g = common::gpu();
    for k in webtune::ops::KERNELS {
        assert_eq!(common::block(webtune::gpu::compile_error(g, k)), None);
    }
    // The shader-f16 extra, where the device has it (lavapipe does; SwiftShader does not).
    if g.shader_f16 {
        assert_eq!(common::block(webtune::gpu::compile_error(g, &webtune::ops::matmul::MATMUL_F16)), None);
    }
    if g.subgroups {
        assert_eq!(common::block(webtune::gpu::compile_error(g, &webtune::ops::matmul::MATMUL_SUBGROUP)), None);
    }
}
