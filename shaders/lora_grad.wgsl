// A LoRA linear's two products of its output gradient dy, in one dispatch (CPU adapters'
// dispatch economy; `ops::lora_grad`):
//   g(rows, R)   = dy(rows, out) . B(out, R)            (then dx's and dA's operand)
//   dB(out, R)  += s * dy^T(out, rows) . u(rows, R)     (u = drop(x) A^T from the forward)
// One thread per output, the g outputs first, then dB's; each sums over k in k order with
// fma and ends as the matmul family's epilogue does (g = prod; dB = prod * s + dB),
// so the bits are those of `matmul_dot` on the two products (the kernel the CPU column of
// `ops::matmul::choose` picks for them). The backward of `lora_grad` is not needed: these
// are themselves gradients.
// FLOPs 2*R*(rows*out + out*rows); bytes 4*(2*R*rows*out + R*(rows + out) + 2*R*out) at most.

struct Params {
    rows: u32,
    out: u32,
    r: u32,
    _pad: u32,
    scale: f32,       // s
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;        // (rows, out)
@group(0) @binding(2) var<storage, read> lb: array<f32>;        // B (out, R)
@group(0) @binding(3) var<storage, read> lu: array<f32>;        // u (rows, R)
@group(0) @binding(4) var<storage, read_write> g: array<f32>;   // (rows, R), overwritten
@group(0) @binding(5) var<storage, read_write> db: array<f32>;  // (out, R), added to

@compute @workgroup_size(WG)
fn lora_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    let ng = p.rows * p.r;
    if (i < ng) {
        let m = i / p.r;
        let n = i % p.r;
        var v = 0.0;
        for (var k = 0u; k < p.out; k++) {
            v = fma(dy[m * p.out + k], lb[k * p.r + n], v);
        }
        g[i] = v;
        return;
    }
    let j = i - ng;
    if (j >= p.out * p.r) { return; }
    let o = j / p.r;
    let n = j % p.r;
    var v = 0.0;
    for (var k = 0u; k < p.rows; k++) {
        v = fma(dy[k * p.out + o], lu[k * p.r + n], v);
    }
    var acc = v * p.scale;
    acc += db[j];
    db[j] = acc;
}
