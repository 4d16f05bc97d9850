//! The training run around the step: schedule, data order, validation, reports, and
//! checkpoints that resume bit for bit.

use std::cell::RefCell;
use std::rc::Rc;

use webtune::train::{CheckpointError, Example, Length, LossMode, Run, RunConfig, ScheduleKind, StepReport};
use webtune::Error;

use crate::common::{block, gpu};
use crate::fixture::Fixture;

/// Five training examples (the fixture's three and two shifted copies) and the fixture's
/// three as the validation set.
fn data(fx: &Fixture) -> (Vec<Example>, Vec<Example>) {
    let mut train = fx.examples.clone();
    for (k, e) in fx.examples.iter().take(2).enumerate() {
        let ids = e.ids.iter().map(|&i| (i + 5 + k as u32) % 97).collect();
        train.push(Example { ids, trained: e.trained.clone(), origin: format!("shifted {k}") });
    }
    (train, fx.examples.clone())
}

/// Batch 2 accumulated over micro-batches of 1, 6 steps (so epochs end after steps 3 and
/// 6, with a batch of one), cosine with 2 warm-up steps, validation every 2 steps.
fn config(fx: &Fixture) -> RunConfig {
    let t = fx.trainer(gpu(), LossMode::PerExample, 1);
    RunConfig {
        loss: LossMode::PerExample,
        adamw: t.cfg.adamw,
        batch: 2,
        grad_accum: 2,
        micro_batch: None,
        length: Length::Steps(6),
        schedule: ScheduleKind::Cosine,
        warmup: 2,
        seed: 42,
        shuffle: true,
        eval_every: 2,
    }
}

fn new_run<'g>(fx: &Fixture, cfg: RunConfig) -> Run<'g> {
    let g = gpu();
    let (train, valid) = data(fx);
    let t = fx.trainer(g, cfg.loss, 8);
    // A fake clock: every reading is 10 ms after the one before.
    let mut now = 0.0;
    Run::new(t, cfg, train, valid).unwrap().with_clock(move || {
        now += 10.0;
        now
    })
}

fn arenas(run: &Run) -> Vec<Vec<u32>> {
    let g = gpu();
    run.trainer
        .model
        .params
        .arenas
        .iter()
        .flat_map(|a| [Some(&a.weights), a.m.as_ref(), a.v.as_ref()])
        .flatten()
        .map(|x| block(g.read_u32(x)).unwrap())
        .collect()
}

fn same(a: &StepReport, b: &StepReport) {
    assert_eq!(a.step, b.step);
    assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}: loss {} vs {}", a.step, a.loss, b.loss);
    assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits(), "step {}: grad norm", a.step);
    assert_eq!(a.lr.to_bits(), b.lr.to_bits(), "step {}: lr", a.step);
    assert_eq!(a.valid_loss.map(f64::to_bits), b.valid_loss.map(f64::to_bits), "step {}: validation", a.step);
    assert_eq!((a.epoch, a.examples, a.tokens), (b.epoch, b.examples, b.tokens), "step {}", a.step);
}

#[test]
fn a_run_reports_schedule_epochs_validation_and_throughput() {
    let fx = Fixture::load("llama");
    let cfg = config(&fx);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    let mut run = new_run(&fx, cfg).on_step(move |r| sink.borrow_mut().push(r.clone()));
    assert_eq!(run.trainer.cfg.micro_batch, 1, "batch 2 over 2 accumulation steps");
    let sched = run.schedule();
    let reports = block(run.run_to_end()).unwrap();
    assert_eq!(*seen.borrow(), reports, "the callback sees every report");
    assert_eq!(reports.len(), 6);
    assert!(block(run.next_step()).unwrap().is_none() && run.is_done());
    for r in &reports {
        eprintln!("{r:?}");
        assert_eq!(r.lr, sched.lr(r.step - 1));
        assert_eq!(r.ms, 10.0);
        assert_eq!(r.tokens_per_s, r.tokens as f64 / 0.01);
        assert_eq!(r.valid_loss.is_some(), r.step % 2 == 0, "step {}", r.step);
    }
    assert_eq!(reports[0].lr, 0.0, "warm-up starts from 0");
    assert_eq!(reports.iter().map(|r| r.examples).collect::<Vec<_>>(), [2, 2, 1, 2, 2, 1]);
    assert_eq!(reports.iter().map(|r| r.epoch).collect::<Vec<_>>(), [0.4, 0.8, 1.0, 1.4, 1.8, 2.0]);
    // Each epoch sees every example once, in a seeded order that changes per epoch.
    let order = run.order().to_vec();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1, 2, 3, 4]);
    let fresh = new_run(&fx, config(&fx));
    assert_ne!(fresh.order(), order, "the second epoch is reshuffled");
    assert_eq!(fresh.order(), new_run(&fx, config(&fx)).order(), "the order follows the seed");
    let v = reports.iter().filter_map(|r| r.valid_loss).collect::<Vec<_>>();
    assert!(v[2] < v[0], "validation loss falls: {v:?}");
}

/// 6 steps straight vs 3 steps, save, a new trainer from the base model, restore, 3 steps:
/// the same losses, norms, rates, validation losses and final state, bit for bit. The
/// checkpoint falls on an epoch boundary, so the restored run must start the next epoch
/// with the same shuffle.
#[test]
fn a_restored_checkpoint_continues_bit_for_bit() {
    let fx = Fixture::load("llama");
    let mut straight = new_run(&fx, config(&fx));
    let want = block(straight.run_to_end()).unwrap();

    let mut first = new_run(&fx, config(&fx));
    for _ in 0..3 {
        block(first.next_step()).unwrap().unwrap();
    }
    let bytes = block(first.save()).unwrap();
    drop(first);
    let mut second = new_run(&fx, config(&fx));
    second.restore_bytes(&bytes).unwrap();
    assert_eq!(second.step(), 3);
    let got = block(second.run_to_end()).unwrap();
    assert_eq!(got.len(), 3);
    for (a, b) in want[3..].iter().zip(&got) {
        same(a, b);
    }
    assert!(arenas(&straight) == arenas(&second), "weights and moments after 6 steps must be identical");

    // Saving again after restoring gives the same state (a checkpoint of a checkpoint).
    let again = block(straight.save()).unwrap();
    let after = block(second.save()).unwrap();
    assert!(again == after, "checkpoints of the straight and resumed runs differ");

    // The micro-batch may differ on resume (it only splits the sums).
    let mut cfg = config(&fx);
    cfg.micro_batch = Some(2);
    let mut third = new_run(&fx, cfg);
    third.restore_bytes(&bytes).unwrap();
    let r = block(third.next_step()).unwrap().unwrap();
    assert!((r.loss - want[3].loss).abs() < 1e-6 * want[3].loss, "{} vs {}", r.loss, want[3].loss);
}

#[test]
fn foreign_truncated_and_mismatched_checkpoints_are_typed_errors() {
    let fx = Fixture::load("llama");
    let mut run = new_run(&fx, config(&fx));
    block(run.next_step()).unwrap();
    let bytes = block(run.save()).unwrap();

    // Truncated anywhere: in the header or in the data.
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = new_run(&fx, config(&fx)).restore_bytes(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, Error::Checkpoint(CheckpointError::Corrupt(_))), "cut at {cut}: {err}");
    }
    // A model file is safetensors but not a checkpoint.
    let model = std::fs::read(fx.dir.join("model.safetensors")).unwrap();
    let err = new_run(&fx, config(&fx)).restore_bytes(&model).unwrap_err();
    assert!(matches!(err, Error::Checkpoint(CheckpointError::Foreign(_))), "{err}");

    // Another configuration: named.
    let mut cfg = config(&fx);
    cfg.batch = 3;
    cfg.schedule = ScheduleKind::Linear;
    let err = new_run(&fx, cfg).restore_bytes(&bytes).unwrap_err();
    eprintln!("{err}");
    let Error::Checkpoint(CheckpointError::Mismatch(d)) = &err else { panic!("{err}") };
    let what: Vec<&str> = d.iter().map(|x| x.what.as_str()).collect();
    assert_eq!(what, ["run.batch", "run.schedule"], "{err}");
    assert!(err.to_string().contains("run.batch is 2 in the checkpoint but 3 here"), "{err}");

    // Other data.
    let g = gpu();
    let (mut train, valid) = data(&fx);
    train.pop();
    let mut other = Run::new(fx.trainer(g, LossMode::PerExample, 8), config(&fx), train, valid).unwrap();
    let err = other.restore_bytes(&bytes).unwrap_err();
    assert!(err.to_string().contains("the training set is 5 examples"), "{err}");

    // Another model: the qwen2 fixture differs in shape and parameters.
    let q = Fixture::load("qwen2");
    let (train, valid) = data(&fx);
    let mut other = Run::new(q.trainer(g, LossMode::PerExample, 8), config(&fx), train, valid).unwrap();
    let err = other.restore_bytes(&bytes).unwrap_err();
    eprintln!("{err}");
    let Error::Checkpoint(CheckpointError::Mismatch(d)) = &err else { panic!("{err}") };
    assert!(d.iter().any(|x| x.what == "model.arch"), "{err}");
    assert_eq!(other.step(), 0, "nothing restored");
}
