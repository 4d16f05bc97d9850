//! Global L2 norm of all gradients (shaders/grad_norm.wgsl), read by the optimizer on the
//! GPU so clipping and the non-finite guard cost no readback.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Arg, Cost, Encoder, Tensor, WG};

crate::kernel!(GRAD_NORM, "grad_norm", ITEMS, CHUNK);

/// Elements each thread of the first stage sums.
const ITEMS: u32 = 16;
/// Elements summed by one workgroup of the first stage.
const CHUNK: u32 = WG * ITEMS;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    offset: u32,
}

/// Elements of scratch `grad_norm` needs for gradients of these lengths: one partial sum per
/// CHUNK elements of each tensor.
pub fn partials_len(lens: &[usize]) -> usize {
    lens.iter().map(|l| l.div_ceil(CHUNK as usize)).sum()
}

/// stats(4): [0] = sqrt(sum of squares of every element of `grads`), [1] = that sum;
/// [2], [3] untouched. A NaN anywhere makes [0] NaN, an Inf (or a sum of squares beyond
/// f32) makes it Inf. `partials` holds at least `partials_len` of the grads' lengths.
pub fn grad_norm(enc: &mut Encoder, grads: &[Tensor], partials: &Tensor, stats: &Tensor) {
    let total = partials_len(&grads.iter().map(|g| g.len).collect::<Vec<_>>());
    assert!(partials.len >= total, "grad_norm needs {total} partials, has {}", partials.len);
    assert!(stats.len >= 2);
    let mut offset = 0;
    for g in grads {
        let groups = g.len.div_ceil(CHUNK as usize);
        if groups == 0 {
            continue;
        }
        let p = Params { len: g.len as u32, offset: offset as u32 };
        let cost = Cost { flops: 2 * g.len as u64, bytes: 4 * (g.len + groups) as u64 };
        enc.dispatch(
            &GRAD_NORM,
            "grad_norm_partials",
            &p,
            &[Arg::R(g), Arg::W(partials)],
            grid_1d(groups * WG as usize, WG),
            cost,
        );
        offset += groups;
    }
    let p = Params { len: total as u32, offset: 0 };
    let cost = Cost { flops: total as u64 + 1, bytes: 4 * (total + 2) as u64 };
    enc.dispatch(&GRAD_NORM, "grad_norm_final", &p, &[Arg::R(partials), Arg::W(stats)], [1, 1, 1], cost);
}
