// Prepended to every kernel file, after the constants shared with Rust (WG, ACCUMULATE
// and the kernel's own; see `Kernel::source` in src/gpu/encoder.rs).
//
// ACCUMULATE is the flags bit of kernels that can accumulate into their output (gradient
// accumulation adds into a gradient instead of overwriting it).

// The flat thread index of a 1-D launch folded into (x, y) workgroups by `grid_1d`
// (a dimension holds at most 65535 workgroups). `wg` is the workgroup width.
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.y * (nwg.x * wg) + gid.x;
}
