use webtune::gpu::Encoder;
use webtune::ops::embedding::{backward, backward_scaled, forward, forward_scaled, plan, scratch_len, GroupIndex, SEG};

use crate::common::{block, check, f64s, gpu, Rng, Tol};
use crate::reference::embedding::{embedding, embedding_backward};
use crate::reference::{assert_grad, dot, numeric_grad};

/// A gather is exact; adding the position row rounds once, half an ulp of the result.
const EMBED: Tol = Tol { name: "EMBED", abs: 0.0, rel: 1.2e-7 };
/// f32 sums of the few rows sharing an id plus the pre-filled gradient: a handful of
/// roundings, each at most 2^-24 of the running sum (worst seen 1.2e-7).
const EMBED_GRAD: Tol = Tol { name: "EMBED_GRAD", abs: 0.0, rel: 5e-7 };

// (rows, C, V, P): V and P primes or 1, smaller than rows (repeated ids) or far larger
// (unused ids).
// The last three have ids with more than SEG (64) rows, summed in several segments: one id
// in every row (V = 1), a few ids each filling hundreds of rows, and exactly 2 x SEG rows.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 1, 1),
    (5, 3, 2, 5),
    (33, 7, 11, 40),
    (33, 129, 1000, 33),
    (5, 576, 7, 3),
    (33, 1000, 13, 64),
    (1000, 67, 1, 1),
    (1000, 33, 3, 2),
    (128, 257, 1, 1),
];

/// A scratch for `backward` with NaN in it: the first stage must write, not read, it.
fn scratch(rows: usize, c: usize) -> webtune::gpu::Tensor {
    gpu().upload_f32("scratch", &vec![f32::NAN; scratch_len(rows, c).max(1)]).unwrap()
}

fn ids(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v) as u32).collect()
}

#[test]
fn embedding_forward_matches_reference() {
    let g = gpu();
    let mut rng = Rng::new(11);
    for &(rows, c, v, np) in SHAPES {
        let tok = ids(&mut rng, rows, v);
        let pos = ids(&mut rng, rows, np);
        let wte = rng.vec(v * c, 1.0);
        let wpe = rng.vec(np * c, 1.0);
        let (ttok, tpos) = (g.upload_u32("ids", &tok).unwrap(), g.upload_u32("pos", &pos).unwrap());
        let (twte, twpe) = (g.upload_f32("wte", &wte).unwrap(), g.upload_f32("wpe", &wpe).unwrap());
        let out_tok = g.zeros("out", rows * c).unwrap();
        let out_both = g.zeros("out2", rows * c).unwrap();
        let mut enc = Encoder::new(g);
        forward(&mut enc, &ttok, &twte, None, &out_tok, rows, c);
        forward(&mut enc, &ttok, &twte, Some((&tpos, &twpe)), &out_both, rows, c);
        enc.submit();
        let (wd, pd) = (f64s(&wte), f64s(&wpe));
        let what = format!("embedding {rows}x{c} V{v} P{np}");
        check(&what, &block(g.read_f32(&out_tok)).unwrap(), &embedding(&tok, &wd, None, c), EMBED);
        let e = check(
            &format!("{what} +pos"),
            &block(g.read_f32(&out_both)).unwrap(),
            &embedding(&tok, &wd, Some((&pos, &pd)), c),
            EMBED,
        );
        eprintln!("{what} +pos: worst rel {e:.2e}");
    }
}

#[test]
fn embedding_backward_accumulates_per_id() {
    let g = gpu();
    let mut rng = Rng::new(12);
    for &(rows, c, v, np) in SHAPES {
        // Token and position tables go through the same function with their own index.
        for (table, n_ids) in [("wte", v), ("wpe", np)] {
            let tok = ids(&mut rng, rows, n_ids);
            let dout = rng.vec(rows * c, 1.0);
            let dw0 = rng.vec(n_ids * c, 1.0);
            let index = GroupIndex::build(g, &tok).unwrap();
            let tdout = g.upload_f32("dout", &dout).unwrap();
            let tdw = g.upload_f32("dw", &dw0).unwrap();
            let mut enc = Encoder::new(g);
            backward(&mut enc, &index, &tdout, &tdw, &scratch(rows, c), c);
            enc.submit();
            let want: Vec<f64> = embedding_backward(&tok, &f64s(&dout), n_ids, c)
                .iter()
                .zip(&dw0)
                .map(|(d, w0)| d + *w0 as f64)
                .collect();
            let what = format!("embedding backward {table} {rows}x{c} ids<{n_ids}");
            let e = check(&what, &block(g.read_f32(&tdw)).unwrap(), &want, EMBED_GRAD);
            eprintln!("{what}: worst rel {e:.2e}");
        }
    }
}

#[test]
fn group_index_groups_rows_by_id_in_segments() {
    let tok = [5u32, 2, 5, 9, 2, 5, 0];
    let (order, segs, finals) = plan(&tok);
    assert_eq!(order, [6, 1, 4, 0, 2, 5, 3]);
    let d = u32::MAX;
    assert_eq!(segs, [[0, 0, 1, d], [2, 1, 3, d], [5, 3, 6, d], [9, 6, 7, d]]);
    assert!(finals.is_empty());
    let index = GroupIndex::build(gpu(), &tok).unwrap();
    assert_eq!((index.n_uniq, index.n), (4, 7));
    let empty = GroupIndex::build(gpu(), &[]).unwrap();
    assert_eq!((empty.n_uniq, empty.n), (0, 0));
    // One id in 2 * SEG + 1 rows and another once: three segments and one final for the
    // first (slots 0..3), the other summed directly.
    let mut tok = vec![7u32; 2 * SEG + 2];
    tok[10] = 3;
    let (order, segs, finals) = plan(&tok);
    assert_eq!(order[0], 10);
    let s = SEG as u32;
    assert_eq!(segs, [[3, 0, 1, d], [7, 1, 1 + s, 0], [7, 1 + s, 1 + 2 * s, 1], [7, 1 + 2 * s, 2 + 2 * s, 2]]);
    assert_eq!(finals, [[7, 0, 3]]);
}

/// The persistent index is rewritten batch after batch (as the trainer does), smaller and
/// larger, and each backward sees only its own batch.
#[test]
fn embedding_backward_reuses_one_index() {
    let g = gpu();
    let mut rng = Rng::new(15);
    let (cap, c, v) = (300, 19, 4);
    let index = GroupIndex::new(g, cap).unwrap();
    let scr = scratch(cap, c);
    for rows in [300, 7, 130, 300] {
        let tok = ids(&mut rng, rows, v);
        let dout = rng.vec(rows * c, 1.0);
        let (tdout, tdw) = (g.upload_f32("dout", &dout).unwrap(), g.zeros("dw", v * c).unwrap());
        let batch = index.write(g, &tok);
        let mut enc = Encoder::new(g);
        backward(&mut enc, &batch, &tdout, &tdw, &scr, c);
        enc.submit();
        let want = embedding_backward(&tok, &f64s(&dout), v, c);
        check(
            &format!("embedding backward {rows} rows, index of {cap}"),
            &block(g.read_f32(&tdw)).unwrap(),
            &want,
            EMBED_GRAD,
        );
    }
}

// More rows and more unique ids than one grid dimension's 65535 workgroups, so the grid
// folds into y in both directions.
#[test]
fn embedding_many_rows_and_ids_fold_the_grid() {
    let g = gpu();
    let mut rng = Rng::new(13);
    let (rows, c, v) = (70_001, 1, 80_021);
    let mut tok: Vec<u32> = (0..rows as u32).collect();
    for i in (1..rows).rev() {
        tok.swap(i, rng.below(i + 1));
    }
    tok[rows - 1] = tok[0]; // one repeat among many singletons
    let wte = rng.vec(v * c, 1.0);
    let dout = rng.vec(rows * c, 1.0);
    let index = GroupIndex::build(g, &tok).unwrap();
    assert!(index.n_uniq > 65535);
    let (ttok, twte, tdout) =
        (g.upload_u32("ids", &tok).unwrap(), g.upload_f32("wte", &wte).unwrap(), g.upload_f32("dout", &dout).unwrap());
    let out = g.zeros("out", rows * c).unwrap();
    let dw = g.zeros("dw", v * c).unwrap();
    let mut enc = Encoder::new(g);
    forward(&mut enc, &ttok, &twte, None, &out, rows, c);
    backward(&mut enc, &index, &tdout, &dw, &scratch(rows, c), c);
    enc.submit();
    check("embedding 70001 rows", &block(g.read_f32(&out)).unwrap(), &embedding(&tok, &f64s(&wte), None, c), EMBED);
    let want = embedding_backward(&tok, &f64s(&dout), v, c);
    check("embedding backward 70001 ids", &block(g.read_f32(&dw)).unwrap(), &want, EMBED_GRAD);
}

#[test]
fn reference_embedding_backward_matches_finite_differences() {
    let mut rng = Rng::new(14);
    let (c, v, np) = (3, 5, 4);
    let tok = [1u32, 3, 1, 0];
    let pos = [0u32, 1, 2, 1];
    let wte = f64s(&rng.vec(v * c, 1.0));
    let wpe = f64s(&rng.vec(np * c, 1.0));
    let proj = f64s(&rng.vec(tok.len() * c, 1.0));
    let h = 1e-5;
    let num = numeric_grad(&wte, h, |w| dot(&proj, &embedding(&tok, w, Some((&pos, &wpe)), c)));
    assert_grad("embedding dwte", &embedding_backward(&tok, &proj, v, c), &num);
    let num = numeric_grad(&wpe, h, |w| dot(&proj, &embedding(&tok, &wte, Some((&pos, w)), c)));
    assert_grad("embedding dwpe", &embedding_backward(&pos, &proj, np, c), &num);
}

/// The gather from a compact frozen table gives, bit for bit, the f32 gather of the
/// host-dequantized table: every format, with and without position rows, repeated and
/// unused ids, awkward row counts.
#[test]
fn embedding_forward_compact_equals_f32_gather_of_host_dequantized_table() {
    use webtune::load::compact::{dequantize_gguf, CompactFormat, CompactTensor};
    use webtune::ops::dequant::CompactWeight;
    use webtune::ops::embedding::{forward_compact, forward_compact_scaled, forward_scaled};
    let g = gpu();
    let mut rng = Rng::new(15);
    for &f in CompactFormat::ALL {
        let qk = f.block_values();
        // (rows, C, V, P)
        let shapes: Vec<(usize, usize, usize, usize)> = if qk == 1 {
            vec![(1, 1, 1, 1), (33, 7, 11, 40), (5, 130, 3, 5)]
        } else {
            vec![(1, qk, 1, 1), (33, 3 * qk, 11, 40), (7, 2 * qk, 40, 3)]
        };
        for (rows, c, v, np) in shapes {
            let bytes = crate::dequant::random_gguf(&mut rng, f, v, c);
            let table = dequantize_gguf(f, &bytes);
            let t = CompactTensor::from_gguf("token_embd.weight", f, v, c, &bytes).unwrap();
            let tok = ids(&mut rng, rows, v);
            let pos = ids(&mut rng, rows, np);
            let wpe = rng.vec(np * c, 1.0);
            let wq = CompactWeight::upload(g, "wq", &t).unwrap();
            let (ttok, tpos) = (g.upload_u32("ids", &tok).unwrap(), g.upload_u32("pos", &pos).unwrap());
            let (twte, twpe) = (g.upload_f32("wte", &table).unwrap(), g.upload_f32("wpe", &wpe).unwrap());
            let outs: Vec<_> = (0..6).map(|_| g.zeros("out", rows * c).unwrap()).collect();
            // Gemma 3's scale, sqrt(C) rounded to f32 (the 270M model's C = 640).
            let scale = (640f64).sqrt() as f32;
            let mut enc = Encoder::new(g);
            forward(&mut enc, &ttok, &twte, None, &outs[0], rows, c);
            forward_compact(&mut enc, &ttok, &wq, None, &outs[1], rows);
            forward(&mut enc, &ttok, &twte, Some((&tpos, &twpe)), &outs[2], rows, c);
            forward_compact(&mut enc, &ttok, &wq, Some((&tpos, &twpe)), &outs[3], rows);
            forward_scaled(&mut enc, &ttok, &twte, scale, None, &outs[4], rows, c);
            forward_compact_scaled(&mut enc, &ttok, &wq, scale, None, &outs[5], rows);
            enc.submit();
            let r: Vec<Vec<u32>> =
                outs.iter().map(|o| block(g.read_f32(o)).unwrap().iter().map(|x| x.to_bits()).collect()).collect();
            let what = format!("{} embedding {rows}x{c} V{v}", f.name());
            assert!(r[0] == r[1], "{what}: compact gather differs from the f32 gather");
            assert!(r[2] == r[3], "{what} +pos: compact gather differs from the f32 gather");
            assert!(r[4] == r[5], "{what} scaled: compact gather differs from the f32 gather");
            let scaled: Vec<u32> = r[1].iter().map(|&b| (f32::from_bits(b) * scale).to_bits()).collect();
            assert!(r[5] == scaled, "{what} scaled: not the rows times the f32 scale");
            // And the f32 gather is the table's rows (so neither side is trivially empty).
            let want: Vec<u32> = tok
                .iter()
                .flat_map(|&i| table[i as usize * c..(i as usize + 1) * c].to_vec())
                .map(|x| x.to_bits())
                .collect();
            assert!(r[1] == want, "{what}: compact gather is not the host-dequantized rows");
        }
    }
}

/// Gemma 3's scaled embedding: out = W[ids] * sqrt(C) (the scale rounded to f32 first, as
/// transformers casts it to the model dtype), and dW += sum of dout * sqrt(C) per id,
/// against the f64 reference with the same f32 scale. One more rounding each: EMBED's
/// half ulp becomes one ulp, EMBED_GRAD is unchanged.
#[test]
fn scaled_embedding_matches_reference() {
    let g = gpu();
    let mut rng = Rng::new(14);
    const EMBED_SCALED: Tol = Tol { name: "EMBED_SCALED", abs: 0.0, rel: 2.4e-7 };
    for &(rows, c, v, _) in SHAPES {
        let scale = (c as f32).sqrt();
        let tok = ids(&mut rng, rows, v);
        let (wte, dout, dw0) = (rng.vec(v * c, 1.0), rng.vec(rows * c, 1.0), rng.vec(v * c, 1.0));
        let index = GroupIndex::build(g, &tok).unwrap();
        let (ttok, twte) = (g.upload_u32("ids", &tok).unwrap(), g.upload_f32("wte", &wte).unwrap());
        let (tdout, tdw) = (g.upload_f32("dout", &dout).unwrap(), g.upload_f32("dw", &dw0).unwrap());
        let out = g.zeros("out", rows * c).unwrap();
        let mut enc = Encoder::new(g);
        forward_scaled(&mut enc, &ttok, &twte, scale, None, &out, rows, c);
        let part = scratch(rows, c);
        backward_scaled(&mut enc, &index, &tdout, scale, &tdw, &part, c);
        enc.submit();
        let s = scale as f64;
        let want: Vec<f64> = embedding(&tok, &f64s(&wte), None, c).iter().map(|x| x * s).collect();
        let what = format!("scaled embedding {rows}x{c} V{v}");
        check(&what, &block(g.read_f32(&out)).unwrap(), &want, EMBED_SCALED);
        let scaled: Vec<f64> = dout.iter().map(|&d| d as f64 * s).collect();
        let want: Vec<f64> =
            embedding_backward(&tok, &scaled, v, c).iter().zip(&dw0).map(|(d, w0)| d + *w0 as f64).collect();
        check(&format!("{what} backward"), &block(g.read_f32(&tdw)).unwrap(), &want, EMBED_GRAD);
    }
}
