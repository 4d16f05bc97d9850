//! The GPU layer: device creation kept apart from the work (so tests and the browser inject
//! their own device), tensors as views into storage buffers, kernels whose WGSL is assembled
//! with the constants it shares with Rust (`Kernel::source`), a pipeline cache, an encoder
//! that records a whole step into one compute pass, and async readback that never blocks in
//! wasm.

mod context;
mod counters;
mod encoder;
mod readback;
mod tensor;

pub use context::{Gpu, GpuInfo};
pub use counters::{CounterSnapshot, Counters};
pub use encoder::{compile_error, Arg, Cost, Encoder, Kernel, Profile, ProfileEntry};
pub use readback::ReadBuffer;
pub use tensor::Tensor;

/// Threads per workgroup of the 1-D kernels and of the row reductions (`WG` in every
/// shader, see `Kernel::source`). 256 is the WebGPU default maximum.
pub const WG: u32 = 256;

/// The flags bit of kernels that can add into their output instead of overwriting it
/// (gradient accumulation); `ACCUMULATE` in every shader.
pub const ACCUMULATE: u32 = 1;

/// A 1-D grid of `n` threads in workgroups of `wg`, folded into y when it exceeds the
/// 65535 workgroups a dimension may hold. Shaders rebuild the flat index with
/// `flat_id` from common.wgsl.
pub fn grid_1d(n: usize, wg: u32) -> [u32; 3] {
    let groups = (n as u64).div_ceil(wg as u64).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }
}
