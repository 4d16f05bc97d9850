// Prepended to every kernel file.

// The flat thread index of a 1-D launch folded into (x, y) workgroups by `grid_1d`
// (a dimension holds at most 65535 workgroups). `wg` is the workgroup width.
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.y * (nwg.x * wg) + gid.x;
}

// Flags bits shared by kernels that can accumulate into their output (gradient
// accumulation adds into a gradient instead of overwriting it).
const ACCUMULATE: u32 = 1u;
