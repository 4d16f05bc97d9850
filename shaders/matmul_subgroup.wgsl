// ---- The subgroup extra of the skinny product (shaders/matmul.wgsl's matmul_skinny) ----
// Appended to matmul.wgsl in a module with subgroups (`enable subgroups;` under Tint; devices with
// subgroups, `WEBTUNE_SUBGROUPS=1`). The slices of a row are added in matmul_skinny's tree
// order, each step as the same a + b: where two partners are less than a subgroup apart
// through subgroupShuffleDown, with no barrier, and through workgroup memory otherwise. So
// the result is matmul_skinny's, bit for bit, on any subgroup size (NVIDIA 32: no barrier
// after the k loop; lavapipe 8: one round through memory, the rest shuffled).
// It relies on subgroups holding consecutive local indices (as the drivers we know pack
// them): checked, and a product where that fails comes out NaN rather than wrong.
// FLOPs and bytes: matmul_skinny's.
@compute @workgroup_size(256)
fn matmul_skinny_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let lane = skinny_lane(tid);
    let row = lane.x;
    let slice = lane.y;
    let m = wid.x * 16u + row;
    let acc = skinny_slice_sums(min(m, p.m - 1u), slice, k_range(wid.z)); // rows past M: never stored
    let packed = subgroupAll(tid % sg_size == sg_lane);
    let me = row * 16u + slice;
    for (var j0 = 0u; j0 < p.n; j0 += 4u) {
        var v = skinny_cols4(acc, j0);
        for (var w = 8u; w > 0u; w >>= 1u) {
            // Partners are w slices, w * lane.z local indices, apart.
            if (w * lane.z < sg_size) {
                v += subgroupShuffleDown(v, w * lane.z);
            } else {
                skinny_part[me] = v;
                workgroupBarrier();
                if (slice < w) { v += skinny_part[me + w]; }
                workgroupBarrier();
            }
        }
        if (!packed) { v = vec4<f32>(bitcast<f32>(0x7fc00000u)); }
        if (slice == 0u) { skinny_store(m, j0, v); }
    }
}
