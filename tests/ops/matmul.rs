use webtune::gpu::Encoder;
use webtune::ops::matmul::{
    choose, k_ranges, matmul_variant, vec4_fits, Adapter, Extras, KSplit, Linear, LoraEpilogue, Op, Variant,
    WeightLayout,
};

use webtune::load::compact::{CompactFormat, CompactTensor};
use webtune::ops::dequant::CompactWeight;

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::dequant::random_gguf;
use crate::reference::matmul::{linear, linear_backward, transpose};
use crate::reference::{assert_grad, dot, numeric_grad};

/// f32 sums of K products with random signs err by ~sqrt(K) * 2^-24 of the output scale;
/// 2e-6 relative covers K up to a few thousand with margin, and catches any wrong index.
const MATMUL: Tol = Tol { name: "MATMUL", abs: 1e-6, rel: 2e-6 };

// Awkward shapes: 1, primes, sizes straddling the 64- and 128-wide tiles, the 16-deep K
// step and the skinny kernel's 16 columns and 16 rows.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 3),
    (5, 1, 17),
    (63, 65, 15),
    (64, 64, 16),
    (70, 33, 129),
    (3, 130, 257),
    (128, 96, 80),
    (129, 65, 33),
    (70, 8, 129),
    (33, 16, 300),
    (8, 130, 257),
    (16, 17, 40),
    // Multiples of 4 that are not of the tiles: the vec4 kernel's row and column groups.
    (68, 36, 20),
    (132, 20, 44),
];

/// Every kernel that can compute an (m, n, k) product of this layout.
fn variants((m, n, k): (usize, usize, usize), ops: (Op, Op)) -> Vec<Variant> {
    let mut v = vec![Variant::Large, Variant::Tiled, Variant::Reg, Variant::Dot];
    if vec4_fits((m, n, k), ops) {
        v.push(Variant::Reg4);
    }
    if n <= 16 {
        v.push(Variant::Skinny);
    }
    if m <= 16 {
        v.push(Variant::SkinnyT);
    }
    v
}

#[test]
fn matmul_all_transposes_match_reference() {
    let g = gpu();
    let mut rng = Rng::new(1);
    for &(m, n, k) in SHAPES {
        for a_op in [Op::N, Op::T] {
            for b_op in [Op::N, Op::T] {
                let a = rng.vec(m * k, 1.0); // op(A) is (m, k)
                let b = rng.vec(k * n, 1.0); // op(B) is (k, n)
                let c0 = rng.vec(m * n, 1.0);
                // The reference works on the logical matrices; the GPU on the stored layout.
                let a_logical = if a_op == Op::N { f64s(&a) } else { transpose(&f64s(&a), k, m) };
                let b_logical = if b_op == Op::N { f64s(&b) } else { transpose(&f64s(&b), n, k) };
                // linear() computes x W^T, so pass B^T as W.
                let bt = transpose(&b_logical, k, n);
                let want = linear(&a_logical, &bt, None, m, k, n);
                // The accumulating call also scales the product (LoRA's alpha), on every
                // kernel path (tiles, registers, and the few-rows kernel for m <= 4).
                let alpha = 0.37f32;
                let want_acc: Vec<f64> = want.iter().zip(&c0).map(|(w, c)| alpha as f64 * w + *c as f64).collect();

                let ta = g.upload_f32("a", &a).unwrap();
                let tb = g.upload_f32("b", &b).unwrap();
                let tc2 = g.zeros("c2", m * n).unwrap();
                // The kernels that sum k in k order give one result, bit for bit.
                let mut k_order: Option<(Variant, Vec<f32>)> = None;
                for variant in variants((m, n, k), (a_op, b_op)) {
                    let tc = g.upload_f32("c", &c0).unwrap();
                    let mut enc = Encoder::new(g);
                    let ex = Extras::default();
                    matmul_variant(&mut enc, variant, (m, n, k), alpha, &ta, a_op, &tb, b_op, ex, &tc, true);
                    matmul_variant(&mut enc, variant, (m, n, k), 1.0, &ta, a_op, &tb, b_op, ex, &tc2, false);
                    enc.submit();
                    let what = format!("matmul {variant:?} {m}x{n}x{k} {a_op:?}{b_op:?}");
                    check(&format!("{what} accumulate"), &block(g.read_f32(&tc)).unwrap(), &want_acc, MATMUL);
                    let got = block(g.read_f32(&tc2)).unwrap();
                    check(&what, &got, &want, MATMUL);
                    if !variant.splits_k() {
                        if let Some((first, bits)) = &k_order {
                            let same = bits.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
                            assert!(same, "{what}: not the bits of {first:?}");
                        } else {
                            k_order = Some((variant, got));
                        }
                    }
                }
            }
        }
    }
}

/// The epilogue on every kernel that carries it: C = alpha A B + bias + resid + C
/// + s U LB^T (LB stored (N, R), or (R, N)), against float64; and two runs give the same bits.
#[test]
fn matmul_epilogue_bias_resid_lora_every_variant() {
    let g = gpu();
    let mut rng = Rng::new(4);
    for &(m, n, k, r) in &[(70, 33, 129, 8), (5, 130, 20, 3), (129, 65, 33, 16), (17, 200, 64, 1), (70, 33, 36, 4)] {
        let a = rng.vec(m * k, 1.0);
        let b = rng.vec(n * k, 1.0); // stored (N, K): x W^T
        let bias = rng.vec(n, 1.0);
        let resid = rng.vec(m * n, 1.0);
        let c0 = rng.vec(m * n, 1.0);
        let u = rng.vec(m * r, 1.0);
        let lb = rng.vec(n * r, 1.0);
        let (alpha, s) = (0.7f32, 1.9f32);
        let xw = linear(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, k, n);
        let ul = linear(&f64s(&u), &f64s(&lb), None, m, r, n);
        let lbt = transpose(&f64s(&lb), n, r); // (R, N)
        let bias_d = f64s(&bias);
        let want: Vec<f64> = (0..m * n)
            .map(|i| {
                let prod = xw[i] - bias_d[i % n];
                alpha as f64 * prod + bias_d[i % n] + resid[i] as f64 + c0[i] as f64 + s as f64 * ul[i]
            })
            .collect();
        let t = |name: &str, v: &[f32]| g.upload_f32(name, v).unwrap();
        let (ta, tb, tbias, tres, tu, tlb) =
            (t("a", &a), t("b", &b), t("bias", &bias), t("r", &resid), t("u", &u), t("lb", &lb));
        let lbt32: Vec<f32> = lbt.iter().map(|&v| v as f32).collect();
        let tlbt = t("lbt", &lbt32);
        for variant in variants((m, n, k), (Op::N, Op::T)).into_iter().filter(|v| !v.splits_k()) {
            for b_t in [false, true] {
                let lora = LoraEpilogue { u: &tu, b: if b_t { &tlbt } else { &tlb }, b_t, rank: r, scale: s };
                let ex = Extras { bias: Some(&tbias), resid: Some(&tres), lora: Some(lora), ..Default::default() };
                let mut outs = Vec::new();
                for _ in 0..2 {
                    let tc = t("c", &c0);
                    let mut enc = Encoder::new(g);
                    matmul_variant(&mut enc, variant, (m, n, k), alpha, &ta, Op::N, &tb, Op::T, ex, &tc, true);
                    enc.submit();
                    outs.push(block(g.read_f32(&tc)).unwrap());
                }
                let what = format!("matmul {variant:?} {m}x{n}x{k} r{r} lora_bt={b_t} epilogue");
                check(&what, &outs[0], &want, MATMUL);
                assert!(
                    outs[0].iter().zip(&outs[1]).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{what}: two runs differ"
                );
            }
        }
    }
}

/// The kernel table, row by row as documented on `choose`.
#[test]
fn matmul_table_picks_per_shape_and_adapter() {
    const GPU: Adapter = Adapter::GPU;
    const CPU: Adapter = Adapter::CPU;
    let (gpu_f16, gpu_sg) = (Adapter { f16: true, ..GPU }, Adapter { subgroups: true, ..GPU });
    let t = |a, mnk, fused| choose(a, mnk, (Op::N, Op::T), fused);
    // Generation's few rows, and an empty K.
    assert_eq!(t(GPU, (4, 576, 576), false), Variant::Dot);
    assert_eq!(t(GPU, (512, 576, 0), false), Variant::Dot);
    // SmolLM2 LoRA r8 at 4 x 128 rows: u = x A^T, g = dy B, dB; dA as its transpose.
    assert_eq!(t(GPU, (512, 8, 576), false), Variant::Skinny);
    assert_eq!(t(GPU, (1536, 8, 512), false), Variant::Skinny);
    assert_eq!(t(GPU, (8, 576, 512), true), Variant::SkinnyT);
    // Few rows that are not a rank (a chunk of the LM head) keep the k order.
    assert_eq!(t(GPU, (8, 576, 512), false), Variant::Dot);
    assert_eq!(t(GPU, (17, 576, 512), false), Variant::Tiled);
    // The base products: 512 x 1536 is 4 x 24 = 96 tiles of 128 x 64; 512 x 576 is 36.
    assert_eq!(t(GPU, (512, 1536, 576), false), Variant::Large);
    assert_eq!(t(GPU, (512, 576, 576), false), Variant::Tiled);
    // The extras: f16 tiles only where Large would run, subgroups only where Skinny would.
    assert_eq!(t(gpu_f16, (512, 1536, 576), false), Variant::LargeH);
    assert_eq!(t(gpu_f16, (512, 576, 576), false), Variant::Tiled);
    assert_eq!(t(gpu_f16, (512, 8, 576), false), Variant::Skinny);
    assert_eq!(t(gpu_sg, (512, 8, 576), false), Variant::SkinnySg);
    assert_eq!(t(gpu_sg, (8, 576, 512), true), Variant::SkinnyTSg);
    assert_eq!(t(gpu_sg, (8, 576, 512), false), Variant::Dot);
    assert_eq!(t(gpu_sg, (512, 1536, 576), false), Variant::Large);
    let both = Adapter { cpu: true, f16: true, subgroups: true };
    assert_eq!(t(both, (512, 8, 576), false), Variant::Dot, "a CPU adapter keeps its column");
    assert_eq!(t(both, (512, 1536, 576), false), Variant::Reg4);
    for mnk in [(512, 8, 576), (8, 576, 512)] {
        assert_eq!(t(CPU, mnk, true), Variant::Dot);
    }
    // CPU adapters: vec4 loads where every vec4 of the layout is whole.
    assert_eq!(t(CPU, (512, 1536, 576), false), Variant::Reg4);
    assert_eq!(t(CPU, (512, 1536, 575), false), Variant::Reg);
    let c = |mnk, ops| choose(CPU, mnk, ops, false);
    assert_eq!(c((512, 576, 1536), (Op::N, Op::N)), Variant::Reg4);
    assert_eq!(c((512, 578, 1536), (Op::N, Op::N)), Variant::Reg);
    assert_eq!(c((576, 1536, 510), (Op::T, Op::N)), Variant::Reg4);
    assert_eq!(c((578, 1536, 512), (Op::T, Op::N)), Variant::Reg);
    assert_eq!(c((576, 1536, 512), (Op::T, Op::T)), Variant::Reg);
    // Split-K across workgroups (GPUs): SmolLM2's LM head input gradient per chunk of 256
    // rows, 36 tiles of 64 x 64 with K = V = 49152, is cut into 8 ranges (288 workgroups);
    // Llama 3.2's (C = 2048, 128 tiles) into 2; Gemma 3's 262144-token head (C = 640) into 7.
    assert_eq!(k_ranges(GPU, (256, 576, 49152), false), 8);
    assert_eq!(k_ranges(gpu_f16, (256, 576, 49152), false), 8);
    assert_eq!(k_ranges(GPU, (256, 2048, 128256), false), 2);
    assert_eq!(k_ranges(GPU, (256, 640, 262144), false), 7);
    // Not where K is short (1500: a second range would walk under 1024 k; a weight
    // gradient of 1536 x 576 over 1024 rows), where the tiles fill the GPU already (4096 x
    // 4096: 2048 Large tiles), or on a CPU adapter.
    assert_eq!(k_ranges(GPU, (256, 576, 1500), false), 1);
    assert_eq!(k_ranges(GPU, (1536, 576, 1024), false), 1);
    assert_eq!(k_ranges(GPU, (4096, 4096, 49152), false), 1);
    assert_eq!(k_ranges(CPU, (256, 576, 49152), false), 1);
    // LoRA's dA (SkinnyT, 576 / 16 = 36 workgroups) and dB (Skinny, 1536 / 16 = 96) over
    // 16 x 512 rows: 8 and 3 ranges; over 4 x 256 (1024 rows) none.
    assert_eq!(k_ranges(GPU, (8, 576, 8192), true), 8);
    assert_eq!(k_ranges(GPU, (1536, 8, 8192), false), 3);
    assert_eq!(k_ranges(GPU, (8, 576, 1024), true), 1);
    assert_eq!(k_ranges(CPU, (8, 576, 8192), true), 1);
}

#[test]
fn linear_forward_backward_both_layouts() {
    let g = gpu();
    let mut rng = Rng::new(2);
    for &(rows, fin, fout) in &[(1, 5, 3), (9, 64, 65), (33, 17, 130)] {
        for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
            let x = rng.vec(rows * fin, 1.0);
            let w_outin = rng.vec(fout * fin, 0.5);
            let bias = rng.vec(fout, 0.5);
            let resid = rng.vec(rows * fout, 1.0);
            let dy = rng.vec(rows * fout, 1.0);
            let w_stored: Vec<f32> = match layout {
                WeightLayout::OutIn => w_outin.clone(),
                WeightLayout::InOut => transpose(&f64s(&w_outin), fout, fin).iter().map(|&v| v as f32).collect(),
            };
            let (xd, wd, bd, dyd) = (f64s(&x), f64s(&w_outin), f64s(&bias), f64s(&dy));
            let y_ref: Vec<f64> =
                linear(&xd, &wd, Some(&bd), rows, fin, fout).iter().zip(&resid).map(|(y, r)| y + *r as f64).collect();
            let (dx_ref, dw_ref, db_ref) = linear_backward(&dyd, &xd, &wd, rows, fin, fout);

            let lin = Linear { rows, fan_in: fin, fan_out: fout, layout };
            let (tx, tw, tb, tr, tdy) = (
                g.upload_f32("x", &x).unwrap(),
                g.upload_f32("w", &w_stored).unwrap(),
                g.upload_f32("b", &bias).unwrap(),
                g.upload_f32("r", &resid).unwrap(),
                g.upload_f32("dy", &dy).unwrap(),
            );
            let ty = g.zeros("y", rows * fout).unwrap();
            let tdx = g.zeros("dx", rows * fin).unwrap();
            let tdw = g.zeros("dw", fout * fin).unwrap();
            let tdb = g.zeros("db", fout).unwrap();
            let mut enc = Encoder::new(g);
            lin.forward(&mut enc, &tx, &tw, Some(&tb), Some(&tr), &ty, false);
            lin.backward_input(&mut enc, &tdy, &tw, &tdx, false);
            lin.backward_weight(&mut enc, &tdy, &tx, &tdw, Some(&tdb), None);
            enc.submit();
            let what = format!("linear {rows}x{fin}->{fout} {layout:?}");
            check(&format!("{what} y"), &block(g.read_f32(&ty)).unwrap(), &y_ref, MATMUL);
            check(&format!("{what} dx"), &block(g.read_f32(&tdx)).unwrap(), &dx_ref, MATMUL);
            let dw_want = match layout {
                WeightLayout::OutIn => dw_ref.clone(),
                WeightLayout::InOut => transpose(&dw_ref, fout, fin),
            };
            check(&format!("{what} dW"), &block(g.read_f32(&tdw)).unwrap(), &dw_want, MATMUL);
            check(&format!("{what} db"), &block(g.read_f32(&tdb)).unwrap(), &db_ref, MATMUL);
        }
    }
}

#[test]
fn reference_linear_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let (rows, fin, fout) = (3, 4, 5);
    let x = f64s(&rng.vec(rows * fin, 1.0));
    let w = f64s(&rng.vec(fout * fin, 1.0));
    let b = f64s(&rng.vec(fout, 1.0));
    let proj = f64s(&rng.vec(rows * fout, 1.0));
    let (dx, dw, db) = linear_backward(&proj, &x, &w, rows, fin, fout);
    let h = 1e-5;
    assert_grad("linear dx", &dx, &numeric_grad(&x, h, |x| dot(&proj, &linear(x, &w, Some(&b), rows, fin, fout))));
    assert_grad("linear dW", &dw, &numeric_grad(&w, h, |w| dot(&proj, &linear(&x, w, Some(&b), rows, fin, fout))));
    assert_grad("linear db", &db, &numeric_grad(&b, h, |b| dot(&proj, &linear(&x, &w, Some(b), rows, fin, fout))));
}

/// A frozen weight kept compact as the B operand, in both of a Linear layer's products
/// (x W^T and dy W), on every kernel that takes a weight and every format: the same bits
/// as the same kernel over the host-dequantized f32 matrix. Exact, not a tolerance: the
/// in-kernel dequantizer gives the host's bits (tests/ops/dequant.rs) and the kernel then
/// runs the same fmas in the same order.
#[test]
fn matmul_over_a_compact_weight_equals_its_f32_expansion_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng::new(5);
    // W (out, in) = (37, 256): 256 holds every block size; 37 rows straddle no tile. Where
    // the format allows, also in = 96 (a part-filled 64-wide tile of the input gradient)
    // and in = 38 (rows that end mid-vec4: the CPU kernel's tails). And out = 44, whose
    // input gradient (K = 44) the vec4 CPU kernel takes too.
    let rows = 70;
    let shapes = |f: CompactFormat| match f.block_values() {
        1 => vec![(37, 256), (44, 256), (37, 96), (37, 38)],
        32 => vec![(37, 256), (44, 256), (37, 96)],
        _ => vec![(37, 256), (44, 256)],
    };
    for (f, (out, inp)) in CompactFormat::ALL.iter().flat_map(|&f| shapes(f).into_iter().map(move |s| (f, s))) {
        let t = CompactTensor::from_gguf("w", f, out, inp, &random_gguf(&mut rng, f, out, inp)).unwrap();
        let cw = CompactWeight::upload(g, "w", &t).unwrap();
        let tw = g.upload_f32("w f32", &t.dequantize()).unwrap();
        // (M, N, K), B's layout: the forward x W^T and the input gradient dy W.
        for (mnk, b_op) in [((rows, out, inp), Op::T), ((rows, inp, out), Op::N)] {
            let (m, n, k) = mnk;
            let ta = g.upload_f32("a", &rng.vec(m * k, 1.0)).unwrap();
            let kernels = variants(mnk, (Op::N, b_op));
            for variant in kernels.into_iter().filter(|v| !v.splits_k()) {
                let run = |b: &webtune::gpu::Tensor, b_format| {
                    let tc = g.zeros("c", m * n).unwrap();
                    let mut enc = Encoder::new(g);
                    let ex = Extras { b_format, ..Default::default() };
                    matmul_variant(&mut enc, variant, mnk, 1.0, &ta, Op::N, b, b_op, ex, &tc, false);
                    enc.submit();
                    block(g.read_f32(&tc)).unwrap()
                };
                let (got, want) = (run(&cw.words, Some(f)), run(&tw, None));
                let what = format!("matmul {variant:?} {m}x{n}x{k} B{b_op:?} {}", f.name());
                let bad = got.iter().zip(&want).position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(bad.is_none(), "{what}: element {bad:?} differs from the f32 expansion's");
                assert!(want.iter().any(|&v| v != 0.0), "{what}: an all-zero product proves nothing");
            }
        }
    }
}

/// Split-K across workgroups (`KSplit`) on every kernel that takes it (Large, Tiled, the
/// skinny ones, with subgroups where the device has them), every layout, f32 and compact
/// B: against float64 (the ranges' partials add in range order, one more re-association,
/// which the MATMUL tolerance covers); Large and Tiled agree bit for bit under the same
/// ranges (each range in k order, then the same second stage); a row's bits do not depend
/// on how many rows the product has (the chunked LM head relies on it); and a split
/// product differs from the unsplit one somewhere (it is not silently run whole).
#[test]
fn matmul_split_k_matches_reference_bit_for_bit_across_kernels_and_rows() {
    let g = gpu();
    let mut rng = Rng::new(9);
    // K straddles the 16-deep step and the ranges; ranges beyond what K holds (K = 20 in
    // 5 ranges: ranges of 16, so 2) and K shorter than one range.
    // Skinny: N <= 16 (70 x 8, 33 x 16: dB) and M <= 16 (8 x 130: dA, 3 x 130).
    let cases: &[((usize, usize, usize), usize)] = &[
        ((70, 33, 2100), 3),
        ((129, 65, 1000), 7),
        ((3, 130, 4099), 2),
        ((64, 64, 20), 5),
        ((5, 17, 9), 4),
        ((70, 8, 2100), 3),
        ((33, 16, 1030), 6),
        ((8, 130, 3000), 5),
    ];
    let sg = g.subgroups;
    for &((m, n, k), ranges) in cases {
        for (a_op, b_op) in [(Op::N, Op::T), (Op::N, Op::N), (Op::T, Op::N), (Op::T, Op::T)] {
            let a = rng.vec(m * k, 1.0);
            let b = rng.vec(k * n, 1.0);
            let c0 = rng.vec(m * n, 1.0);
            let a_logical = if a_op == Op::N { f64s(&a) } else { transpose(&f64s(&a), k, m) };
            let b_logical = if b_op == Op::N { f64s(&b) } else { transpose(&f64s(&b), n, k) };
            let want = linear(&a_logical, &transpose(&b_logical, k, n), None, m, k, n);
            let alpha = 0.37f32;
            let want_acc: Vec<f64> = want.iter().zip(&c0).map(|(w, c)| alpha as f64 * w + *c as f64).collect();
            let (ta, tb) = (g.upload_f32("a", &a).unwrap(), g.upload_f32("b", &b).unwrap());
            let scratch = g.zeros("split scratch", ranges * m * n).unwrap();
            let run = |variant, alpha, c: &[f32], accumulate, split: Option<KSplit>| {
                let tc = g.upload_f32("c", c).unwrap();
                let mut enc = Encoder::new(g);
                let ex = Extras { k_split: split, ..Default::default() };
                matmul_variant(&mut enc, variant, (m, n, k), alpha, &ta, a_op, &tb, b_op, ex, &tc, accumulate);
                enc.submit();
                block(g.read_f32(&tc)).unwrap()
            };
            let split = Some(KSplit { scratch: &scratch, ranges });
            let zeros = vec![0.0; m * n];
            let mut kernels = vec![Variant::Large, Variant::Tiled];
            if n <= 16 {
                kernels.extend([Variant::Skinny].into_iter().chain(sg.then_some(Variant::SkinnySg)));
            }
            if m <= 16 {
                kernels.extend([Variant::SkinnyT].into_iter().chain(sg.then_some(Variant::SkinnyTSg)));
            }
            let mut first: Option<Vec<f32>> = None;
            for variant in kernels {
                assert!(variant.splits_across_workgroups());
                let what = format!("split-K {ranges} {variant:?} {m}x{n}x{k} {a_op:?}{b_op:?}");
                check(&format!("{what} accumulate"), &run(variant, alpha, &c0, true, split), &want_acc, MATMUL);
                let got = run(variant, 1.0, &zeros, false, split);
                check(&what, &got, &want, MATMUL);
                if k > 16 {
                    let whole = run(variant, 1.0, &zeros, false, None);
                    assert!(
                        whole.iter().zip(&got).any(|(x, y)| x.to_bits() != y.to_bits()),
                        "{what}: the same bits as unsplit (was it split?)"
                    );
                }
                match &first {
                    Some(bits) if !variant.splits_k() => assert!(
                        bits.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what}: not the bits of Large under the same ranges"
                    ),
                    Some(_) => {}
                    None => first = Some(got),
                }
            }
            let split_bits = first.unwrap();
            // The first rows alone (A's rows are its first m' rows only when A is stored
            // (M, K)), under the same ranges: the same bits as in the whole product.
            if a_op == Op::N && m > 2 {
                let rows = 2;
                let part_c = g.zeros("c rows", rows * n).unwrap();
                let mut enc = Encoder::new(g);
                let ex = Extras { k_split: split, ..Default::default() };
                matmul_variant(&mut enc, Variant::Tiled, (rows, n, k), 1.0, &ta, a_op, &tb, b_op, ex, &part_c, false);
                enc.submit();
                let part = block(g.read_f32(&part_c)).unwrap();
                assert!(
                    part.iter().zip(&split_bits).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "split-K {ranges} {m}x{n}x{k}: rows 0..{rows} alone differ from the whole product's"
                );
            }
        }
    }
    // A compact B (the LM head's Q8_0, K along W's rows: dy . W): bit for bit its f32
    // expansion's, split as well.
    let (out, inp, rows, ranges) = (2048, 64, 70, 3);
    for f in [CompactFormat::Q8_0, CompactFormat::Q4_1] {
        let t = CompactTensor::from_gguf("w", f, out, inp, &random_gguf(&mut rng, f, out, inp)).unwrap();
        let cw = CompactWeight::upload(g, "w", &t).unwrap();
        let tw = g.upload_f32("w f32", &t.dequantize()).unwrap();
        let ta = g.upload_f32("dy", &rng.vec(rows * out, 1.0)).unwrap();
        let scratch = g.zeros("split scratch", ranges * rows * inp).unwrap();
        let run = |b: &webtune::gpu::Tensor, b_format| {
            let tc = g.zeros("c", rows * inp).unwrap();
            let mut enc = Encoder::new(g);
            let ex = Extras { b_format, k_split: Some(KSplit { scratch: &scratch, ranges }), ..Default::default() };
            matmul_variant(&mut enc, Variant::Tiled, (rows, inp, out), 1.0, &ta, Op::N, b, Op::N, ex, &tc, false);
            enc.submit();
            block(g.read_f32(&tc)).unwrap()
        };
        let (got, want) = (run(&cw.words, Some(f)), run(&tw, None));
        assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "split-K over {}", f.name());
        assert!(want.iter().any(|&v| v != 0.0));
    }
}

/// Whether the device has an optional feature a test needs. In CI (lavapipe, which has
/// shader-f16 and subgroups) a missing one fails the test rather than skipping it.
fn device_has(g: &webtune::gpu::Gpu, present: bool, feature: &str) -> bool {
    if !present {
        assert!(std::env::var_os("CI").is_none(), "lavapipe offers {feature}; this device ({}) does not", g.info.name);
        eprintln!("SKIPPED: {} has no {feature}", g.info.name);
    }
    present
}

/// The shader-f16 large kernel (`Variant::LargeH`, off by default) on every layout and the
/// awkward shapes, with f32 and compact B: against float64 of its operands rounded to f16.
/// Products of two f16 values are exact in f32 (11 + 11 significant bits), so what is left
/// is f32 accumulation in k order: the MATMUL tolerance. A kernel that skipped the rounding
/// would be off by ~1e-3 relative and fail, and it must differ from the f32 kernel's bits.
#[test]
fn matmul_f16_tiles_match_reference_on_f16_rounded_operands() {
    let g = gpu();
    if !device_has(g, g.shader_f16, "shader-f16") {
        return;
    }
    let h = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect::<Vec<f64>>();
    let mut rng = Rng::new(8);
    let mut rounded_somewhere = false;
    let product = |variant, mnk, a: &[f32], a_op, b: &webtune::gpu::Tensor, b_op, b_format| {
        let (m, n, _) = mnk;
        let ta = g.upload_f32("a", a).unwrap();
        let tc = g.zeros("c", m * n).unwrap();
        let mut enc = Encoder::new(g);
        let ex = Extras { b_format, ..Default::default() };
        matmul_variant(&mut enc, variant, mnk, 1.0, &ta, a_op, b, b_op, ex, &tc, false);
        enc.submit();
        block(g.read_f32(&tc)).unwrap()
    };
    for &(m, n, k) in SHAPES.iter().filter(|s| s.0 > 4) {
        for (a_op, b_op) in [(Op::N, Op::T), (Op::N, Op::N), (Op::T, Op::N), (Op::T, Op::T)] {
            let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
            let a_logical = if a_op == Op::N { h(&a) } else { transpose(&h(&a), k, m) };
            let b_logical = if b_op == Op::N { h(&b) } else { transpose(&h(&b), n, k) };
            let want = linear(&a_logical, &transpose(&b_logical, k, n), None, m, k, n);
            let tb = g.upload_f32("b", &b).unwrap();
            let got = product(Variant::LargeH, (m, n, k), &a, a_op, &tb, b_op, None);
            check(&format!("matmul LargeH {m}x{n}x{k} {a_op:?}{b_op:?}"), &got, &want, MATMUL);
            let f32_bits = product(Variant::Large, (m, n, k), &a, a_op, &tb, b_op, None);
            rounded_somewhere |= got.iter().zip(&f32_bits).any(|(x, y)| x.to_bits() != y.to_bits());
        }
    }
    assert!(rounded_somewhere, "LargeH gave the f32 kernel's bits everywhere: its tiles are not f16");
    // A compact B: an F16 base (exact in f16) and Q8_0 (its f32 values rounded), in the
    // forward x W^T and the input gradient dy W.
    for f in [CompactFormat::F16, CompactFormat::Q8_0] {
        let (out, inp, rows) = (70, 256, 133);
        let t = CompactTensor::from_gguf("w", f, out, inp, &random_gguf(&mut rng, f, out, inp)).unwrap();
        let cw = CompactWeight::upload(g, "w", &t).unwrap();
        let w = h(&t.dequantize()); // (out, in)
        for ((m, n, k), b_op) in [((rows, out, inp), Op::T), ((rows, inp, out), Op::N)] {
            let a = rng.vec(m * k, 1.0);
            let w_nk = if b_op == Op::T { w.clone() } else { transpose(&w, out, inp) }; // (n, k)
            let want = linear(&h(&a), &w_nk, None, m, k, n);
            let got = product(Variant::LargeH, (m, n, k), &a, Op::N, &cw.words, b_op, Some(f));
            check(&format!("matmul LargeH {m}x{n}x{k} B{b_op:?} {}", f.name()), &got, &want, MATMUL);
        }
    }
}

/// The subgroup extra of the skinny kernels (`SkinnySg`, `SkinnyTSg`, off by default) gives
/// the plain skinny kernels' bits on every skinny shape and layout: the same tree of adds,
/// part through shuffles (lavapipe's subgroups are 8 wide: one round through workgroup
/// memory, three shuffled). And the plain ones are right (float64, in the test above).
#[test]
fn matmul_subgroup_skinny_gives_the_skinny_bits() {
    let g = gpu();
    if !device_has(g, g.subgroups, "subgroups") {
        return;
    }
    let mut rng = Rng::new(9);
    let mut runs = 0;
    let extra_shapes = [(300, 16, 1000), (40, 5, 4099), (16, 300, 777)];
    for &(m, n, k) in SHAPES.iter().chain(&extra_shapes) {
        for (a_op, b_op) in [(Op::N, Op::T), (Op::N, Op::N), (Op::T, Op::N), (Op::T, Op::T)] {
            let ta = g.upload_f32("a", &rng.vec(m * k, 1.0)).unwrap();
            let tb = g.upload_f32("b", &rng.vec(k * n, 1.0)).unwrap();
            let pairs =
                [(n <= 16, Variant::Skinny, Variant::SkinnySg), (m <= 16, Variant::SkinnyT, Variant::SkinnyTSg)];
            for (_, plain, sg) in pairs.into_iter().filter(|p| p.0) {
                let run = |variant| {
                    let tc = g.zeros("c", m * n).unwrap();
                    let mut enc = Encoder::new(g);
                    matmul_variant(
                        &mut enc,
                        variant,
                        (m, n, k),
                        1.0,
                        &ta,
                        a_op,
                        &tb,
                        b_op,
                        Extras::default(),
                        &tc,
                        false,
                    );
                    enc.submit();
                    block(g.read_f32(&tc)).unwrap()
                };
                let (want, got) = (run(plain), run(sg));
                let what = format!("matmul {sg:?} {m}x{n}x{k} {a_op:?}{b_op:?}");
                let bad = got.iter().zip(&want).position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(
                    bad.is_none(),
                    "{what}: element {bad:?} is not {plain:?}'s ({:?} vs {:?})",
                    got[bad.unwrap()],
                    want[bad.unwrap()]
                );
                assert!(k == 0 || want.iter().any(|&v| v != 0.0), "{what}: an all-zero product proves nothing");
                runs += 1;
            }
        }
    }
    assert!(runs > 40, "only {runs} skinny products");
}

/// Lavapipe timing of the CPU column's products at SmolLM2-135M's shapes (64 and 512 rows;
/// C 576, MLP 1536) in the three layouts of a linear layer, and 512^3: best of 3 after a
/// warm-up, with GFLOP/s. Not a correctness test: `cargo test --test ops matmul_timing --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn matmul_timing() {
    let g = gpu();
    let mut rng = Rng::new(9);
    // (m, n, k, a_op, b_op, what)
    let shapes = [
        (512, 512, 512, Op::N, Op::T, "512^3 x.W^T"),
        (512, 1536, 576, Op::N, Op::T, "gate x.W^T"),
        (512, 576, 1536, Op::N, Op::N, "down dy.W"),
        (576, 1536, 512, Op::T, Op::N, "dW dy^T.x"),
        (64, 1536, 576, Op::N, Op::T, "gate 64 rows"),
    ];
    for &(m, n, k, a_op, b_op, what) in &shapes {
        let ta = g.upload_f32("a", &rng.vec(m * k, 1.0)).unwrap();
        let tb = g.upload_f32("b", &rng.vec(k * n, 1.0)).unwrap();
        let tc = g.zeros("c", m * n).unwrap();
        let chosen = choose(Adapter::CPU, (m, n, k), (a_op, b_op), false);
        for variant in [Variant::Reg, chosen] {
            let mut best = f64::MAX;
            for _ in 0..4 {
                let t0 = std::time::Instant::now();
                let mut enc = Encoder::new(g);
                matmul_variant(&mut enc, variant, (m, n, k), 1.0, &ta, a_op, &tb, b_op, Extras::default(), &tc, false);
                enc.submit();
                block(g.read_f32(&tc)).unwrap();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
            eprintln!(
                "matmul timing {variant:?} {what} {m}x{n}x{k} {a_op:?}{b_op:?}: {:.1} ms, {gflops:.2} GFLOP/s",
                best * 1e3
            );
        }
    }
}
