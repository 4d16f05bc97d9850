//! `webtune train`: the session's run, driven step by step with a line per step, the
//! state saved on the way, and the trained model written at the end. Every conflict
//! between the settings, the model and the data is found by `Session::check` before the
//! first step.

use std::path::Path;

use webtune::error::{Error, Result};
use webtune::export::peft::AdapterFiles;
use webtune::gpu::Gpu;
use webtune::session::{Session, Settings};
use webtune::train::{Checkpoint, CheckpointError, StepReport, TrainConfig, Trainer};

use crate::cli::{load, read_text, set_data, TrainArgs};

/// A PEFT adapter folder's two files.
pub fn read_adapter(dir: &Path) -> Result<AdapterFiles> {
    let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| Error::io(dir.join(n).display().to_string(), e));
    Ok(AdapterFiles {
        config_json: String::from_utf8(read("adapter_config.json")?)
            .map_err(|_| Error::Config(format!("{}/adapter_config.json is not UTF-8", dir.display())))?,
        safetensors: read("adapter_model.safetensors")?,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    // Through a temporary file, so an interrupted write never leaves half a checkpoint.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display().to_string(), e))
}

fn print_step(r: &StepReport) {
    println!(
        "step {}/{} epoch {:.2} loss {:.6} lr {:.3e} grad_norm {:.4} tokens/s {:.1}",
        r.step, r.total_steps, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens_per_s
    );
    if let Some(v) = r.valid_loss {
        println!("step {} valid_loss {v:.6}", r.step);
    }
}

pub async fn train(gpu: &Gpu, a: TrainArgs) -> Result<()> {
    let resume_bytes = match &a.resume {
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::io(p.display().to_string(), e))?),
        None => None,
    };
    let ck = resume_bytes.as_deref().map(Checkpoint::parse).transpose()?;
    let mut session = Session::new(gpu, Settings::default())?;
    // The checkpoint's settings, else the defaults; the flags given on top.
    let base = match &ck {
        Some(ck) => session.state_settings(ck)?,
        None => Settings::default(),
    };
    session.configure(a.s.apply(&base)?)?;
    let adapter = a.adapter.as_deref().map(read_adapter).transpose()?;
    if let Some(files) = &adapter {
        if a.s.method == Some(webtune::session::Method::Full) {
            return Err(Error::Usage("--adapter continues a LoRA adapter: it cannot train with --method full".into()));
        }
        session.adopt_adapter_config(files)?;
    }
    load(&mut session, &a.model).await?;
    if let Some(files) = &adapter {
        session.import_adapter(files)?;
        eprintln!("continuing the adapter in {}", a.adapter.as_ref().unwrap().display());
    }
    set_data(&mut session, &a.data)?;
    if let Some(v) = &a.valid {
        let name = v.display().to_string();
        if let Some(w) = session.set_eval(Some((&name, &read_text(v)?)))?.and_then(|s| s.warning) {
            eprintln!("{name}: {w}");
        }
    }
    // Everything that could stop the run is found here, before the first step.
    session.check()?;
    let plan = session.plan();
    let s = session.settings().clone();
    let info = session.model_info()?;
    eprintln!(
        "{}: {} parameters ({} trainable); {} training and {} validation examples; {} steps of batch {} \
         (micro-batch {}), {} schedule from lr {:e}, {} warm-up steps",
        a.model,
        info.params,
        info.trainable,
        plan.train_examples,
        plan.valid_examples,
        plan.total_steps,
        s.batch,
        plan.micro_batch,
        s.schedule,
        s.lr,
        s.warmup
    );
    if let Some(m) = &plan.memory {
        eprintln!("GPU memory for micro-batches of {} x {} tokens: {}", m.micro_batch, m.seq, m.estimate);
    }
    session.start()?;
    if let Some(ck) = &ck {
        session.run_mut().unwrap().restore(ck).map_err(|e| match e {
            Error::Checkpoint(CheckpointError::Mismatch(d)) if d.iter().any(|x| x.what == "the training set") => {
                Error::Usage(format!(
                    "{}; resume with the same --data, --val-share and --max-len as the original run",
                    Error::Checkpoint(CheckpointError::Mismatch(d))
                ))
            }
            e => e,
        })?;
        eprintln!("resumed from {} at step {}", a.resume.as_ref().unwrap().display(), session.step_count());
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(a.out.display().to_string(), e))?;
    let state_path = a.out.join("state.safetensors");
    loop {
        if a.stop_after.is_some_and(|n| session.step_count() >= n) {
            break;
        }
        let Some(r) = session.step().await? else { break };
        print_step(&r);
        let done = session.run().is_some_and(|r| r.is_done());
        if a.save_every.is_some_and(|n| n > 0 && r.step.is_multiple_of(n)) && !done {
            write_file(&state_path, &session.save_state().await?)?;
        }
    }
    write_file(&state_path, &session.save_state().await?)?;
    eprintln!("step {}: wrote {}", session.step_count(), state_path.display());
    if session.run().is_some_and(|r| r.is_done()) {
        let format = s.format(session.meta().is_some_and(|m| m.config_json.is_some()));
        let files = session.export(None).await?;
        for (name, bytes) in &files {
            write_file(&a.out.join(name), bytes)?;
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!("wrote the trained model ({}) to {}: {}", format, a.out.display(), names.join(", "));
    }
    Ok(())
}

/// The gradient of the loss over the whole training file as one accumulated batch, by
/// Hugging Face name (`grads`).
pub async fn gradients(session: &mut Session<'_>) -> Result<(f64, Vec<(String, Vec<usize>, Vec<f32>)>)> {
    let examples = session.split()?.train_examples();
    let s = session.settings().clone();
    session.drop_run();
    let model = session.take_model().ok_or_else(|| Error::Usage("load a model first".into()))?;
    let tc = TrainConfig { loss: s.loss, micro_batch: s.micro(), pack: s.pack, ..Default::default() };
    let mut t = Trainer::new(session.gpu(), model, tc)?;
    let loss = t.accumulate(&examples).await?;
    let grads = t.read_grads().await?;
    Ok((loss, grads))
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, shape, data)| {
            let v = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| Error::Usage(format!("{n}: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}
