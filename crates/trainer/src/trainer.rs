//! The SFT run: data → adapters → optimizer steps → logs and checkpoints, resumable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use ember_data::{Loader, LoaderOptions, Tokenizer};
use ember_lora::{add_lora, load_adapter};
use ember_model::gguf::{self, GgufFile};
use ember_model::{GemmaConfig, GemmaForCausalLM, LoadOptions};
use serde::Serialize;

use crate::checkpoint::{self, FORMAT_VERSION, TrainerState};
use crate::config::{OptimKind, RunConfig};
use crate::error::{Result, TrainError};
use crate::eval::{EvalResult, evaluate};
use crate::grads::MicroBatch;
use crate::kernels::{BurnKernels, TrainKernels};
use crate::optim::{AdamW, AdamW8bit, AdamWConfig, Optimizer};
use crate::schedule::Schedule;
use crate::step::{StepSettings, optimizer_step};

/// A run of this many non-finite steps in a row stops training.
const MAX_SKIPPED_IN_A_ROW: usize = 5;

/// One line of `metrics.jsonl`, and what the progress display shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub skipped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: usize,
    /// `stop` was raised: the run saved a checkpoint and ended early.
    pub interrupted: bool,
    pub final_loss: f64,
    pub last_checkpoint: PathBuf,
    pub eval: Option<EvalResult>,
    /// Settings that differ from the resumed checkpoint's run, e.g.
    /// `training.learning_rate: 0.0005 -> 0.0001` (each is also logged as a warning).
    pub resume_changes: Vec<String>,
}

/// Where a run starts from.
pub enum Start {
    Fresh,
    /// Continue from this checkpoint directory.
    Resume(PathBuf),
}

/// Runs `config` on `device`, with `kernels` computing the layers and the loss (falling back
/// to [`BurnKernels`] where they cannot train this model); `on_log` sees every logged step
/// (for a progress bar). When `stop` becomes true (Ctrl-C), the run finishes the current
/// step, saves a checkpoint and returns.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    config: &RunConfig,
    start: Start,
    device: &B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    stop: &AtomicBool,
    mut on_log: impl FnMut(&StepLog),
) -> Result<TrainSummary> {
    let args = &config.training;
    let model_path = &config.model.path;
    let tokenizer = load_tokenizer(model_path)?;
    let splits = ember_data::load(&config.data, &tokenizer)?;
    let train_set = Arc::new(splits.train);
    let options = LoaderOptions::new(&config.data, args.per_device_train_batch_size, tokenizer.pad_id());
    let base = GemmaForCausalLM::<B>::load(model_path, &LoadOptions::new(dtype), device)?;
    let signature = model_signature(model_path)?;
    let mut optimizer = new_optimizer::<B>(config);

    let settings_json = run_settings(config);
    let mut resume_changes = Vec::new();
    let (mut model, mut loader, mut step) = match &start {
        Start::Fresh => {
            let model = add_lora(base, &config.lora, args.seed)?;
            (model, Loader::new(train_set.clone(), options)?, 0)
        }
        Start::Resume(dir) => {
            let (state, optimizer_state) = checkpoint::load_state(dir)?;
            check_resume(dir, &state, &signature, config)?;
            resume_changes = changed_settings(&state.settings, &settings_json);
            for change in &resume_changes {
                tracing::warn!("resuming with a changed setting: {change}");
            }
            let (model, saved_lora) = load_adapter(base, dir)?;
            if saved_lora != config.lora {
                return Err(TrainError::Checkpoint {
                    path: dir.clone(),
                    message: "the [lora] settings differ from the checkpoint's adapter_config.json; \
                              resume with the settings it was trained with"
                        .into(),
                });
            }
            optimizer
                .load_state(optimizer_state, device)
                .map_err(|message| TrainError::Checkpoint {
                    path: dir.clone(),
                    message,
                })?;
            let loader = Loader::resume(train_set.clone(), options, state.loader)?;
            (model, loader, state.global_step)
        }
    };

    let kernels: &dyn TrainKernels<B::InnerBackend> = match kernels.unsupported(&model.valid()) {
        Some(why) => {
            tracing::warn!("the {} kernels cannot train this run ({why}); using burn's", kernels.name());
            &BurnKernels
        }
        None => kernels,
    };

    let total_steps = match args.max_steps {
        Some(steps) => steps,
        None => {
            let micro = (args.num_train_epochs * loader.batches_per_epoch() as f64).ceil() as usize;
            micro.div_ceil(args.gradient_accumulation_steps).max(1)
        }
    };
    let warmup_steps = match args.warmup_steps {
        0 => Schedule::warmup_from_ratio(args.warmup_ratio, total_steps),
        n => n,
    };
    let schedule = Schedule {
        kind: args.lr_scheduler_type,
        peak_lr: args.learning_rate,
        warmup_steps,
        total_steps,
    };
    let settings = StepSettings {
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        gradient_checkpointing: args.gradient_checkpointing,
        profile: false,
    };
    std::fs::create_dir_all(&args.output_dir).map_err(|e| TrainError::io(&args.output_dir, e))?;
    write_resolved_config(&args.output_dir, config)?;
    let resuming = matches!(start, Start::Resume(_));
    let mut metrics = MetricsLog::open(&args.output_dir.join("metrics.jsonl"), resuming)?;

    let state_at = |step: usize, loader: &Loader| TrainerState {
        format_version: FORMAT_VERSION,
        global_step: step,
        total_steps,
        loader: loader.position(),
        model_signature: signature.clone(),
        optim: format!("{:?}", args.optim),
        settings: settings_json.clone(),
    };
    let mut skipped_in_a_row = 0;
    let mut last = (f64::NAN, PathBuf::new());
    while step < total_steps {
        let started = Instant::now();
        let window: Vec<MicroBatch> = (0..args.gradient_accumulation_steps)
            .map(|m| MicroBatch {
                // Distinct per micro-batch and the same after a resume: dropout replays exactly.
                seed: args.seed
                    ^ ((step * args.gradient_accumulation_steps + m) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
                ..MicroBatch::from_batch(&loader.next_batch(), args.pad_to_multiple_of)
            })
            .collect();
        let lr = schedule.lr(step);
        let outcome;
        (model, outcome) = optimizer_step(model, &window, lr, settings, kernels, optimizer.as_mut())?;
        step += 1;
        skipped_in_a_row = if outcome.skipped { skipped_in_a_row + 1 } else { 0 };
        if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
            return Err(TrainError::Diverged(format!(
                "{skipped_in_a_row} steps in a row had a non-finite loss or gradient (last loss {}); \
                 lower the learning rate or check the data",
                outcome.loss
            )));
        }
        let tokens: usize = window.iter().map(|b| b.batch * b.seq).sum();
        let eval_due = args.eval_steps > 0 && step % args.eval_steps == 0;
        let eval_loss = match (&splits.eval, eval_due) {
            (Some(eval_set), true) => Some(
                evaluate(
                    &model.valid(),
                    eval_set,
                    args.per_device_train_batch_size,
                    tokenizer.pad_id(),
                    args.pad_to_multiple_of,
                )
                .loss,
            ),
            _ => None,
        };
        let log = StepLog {
            step,
            total_steps,
            loss: outcome.loss,
            learning_rate: lr,
            grad_norm: outcome.grad_norm,
            tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64(),
            skipped: outcome.skipped,
            eval_loss,
        };
        if outcome.skipped {
            tracing::warn!("step {step}: non-finite loss or gradient, update skipped");
        }
        if step % args.logging_steps.max(1) == 0 || step == total_steps || eval_loss.is_some() {
            metrics.write(&log)?;
            on_log(&log);
        }
        last.0 = outcome.loss;
        let interrupted = stop.load(Ordering::Relaxed);
        if (args.save_steps > 0 && step % args.save_steps == 0) || step == total_steps || interrupted {
            last.1 = checkpoint::save(
                &args.output_dir,
                &model,
                &config.lora,
                optimizer.as_ref(),
                &state_at(step, &loader),
            )?;
            if let Some(keep) = args.save_total_limit {
                checkpoint::prune(&args.output_dir, keep.max(1))?;
            }
        }
        if interrupted {
            return Ok(TrainSummary {
                steps: step,
                interrupted: true,
                final_loss: last.0,
                last_checkpoint: last.1,
                eval: None,
                resume_changes,
            });
        }
    }
    let eval = splits.eval.as_ref().map(|eval_set| {
        evaluate(
            &model.valid(),
            eval_set,
            args.per_device_train_batch_size,
            tokenizer.pad_id(),
            args.pad_to_multiple_of,
        )
    });
    Ok(TrainSummary {
        steps: step,
        interrupted: false,
        final_loss: last.0,
        last_checkpoint: last.1,
        eval,
        resume_changes,
    })
}

fn new_optimizer<B: AutodiffBackend>(config: &RunConfig) -> Box<dyn Optimizer<B::InnerBackend>> {
    let args = &config.training;
    let adamw = AdamWConfig {
        beta1: args.adam_beta1,
        beta2: args.adam_beta2,
        eps: args.adam_epsilon,
        weight_decay: args.weight_decay,
    };
    match args.optim {
        OptimKind::AdamW => Box::new(AdamW::new(adamw)),
        OptimKind::AdamW8bit => Box::new(AdamW8bit::new(adamw)),
    }
}

/// The data pipeline's tokenizer of a model: the checkpoint directory's `tokenizer.json`, or
/// the vocabulary embedded in a GGUF file (the `tokenizer.json` that `ember convert` writes).
pub fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    if gguf::is_gguf(model) {
        return Ok(Tokenizer::new(gguf::tokenizer(&GgufFile::open(model)?)?)?);
    }
    Ok(Tokenizer::from_file(model.join("tokenizer.json"))?)
}

/// What identifies the base model's architecture, from its config.json (or GGUF metadata), so
/// a directory converted from a GGUF file and the file itself are the same model.
fn model_signature(model: &Path) -> Result<String> {
    let c = if gguf::is_gguf(model) {
        gguf::gemma_config(&GgufFile::open(model)?)?
    } else {
        GemmaConfig::from_file(model.join("config.json"))?
    };
    Ok(format!(
        "{:?} layers={} hidden={} heads={}/{} head_dim={} vocab={}",
        c.family,
        c.num_hidden_layers(),
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    ))
}

fn check_resume(dir: &Path, state: &TrainerState, signature: &str, config: &RunConfig) -> Result<()> {
    let refuse = |message: String| {
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message,
        })
    };
    if state.model_signature != signature {
        return refuse(format!(
            "it was trained on another model ({}); this config's model is {signature}",
            state.model_signature
        ));
    }
    let optim = format!("{:?}", config.training.optim);
    if state.optim != optim {
        return refuse(format!(
            "it was trained with optim {}, this config asks for {optim}",
            state.optim
        ));
    }
    Ok(())
}

/// The settings a resume compares: `[data]` and `[training]`, as JSON.
fn run_settings(config: &RunConfig) -> serde_json::Value {
    serde_json::json!({
        "data": serde_json::to_value(&config.data).expect("data settings serialise"),
        "training": serde_json::to_value(&config.training).expect("training settings serialise"),
    })
}

/// `section.key: old -> new` for every setting that differs between two [`run_settings`].
/// Model, adapter and optimizer changes never get here: [`check_resume`] refuses them.
fn changed_settings(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut changes = Vec::new();
    let Some(new_sections) = new.as_object() else {
        return changes;
    };
    for (section, new_values) in new_sections {
        let (Some(old_values), Some(new_values)) = (old[section].as_object(), new_values.as_object()) else {
            continue;
        };
        for (key, value) in new_values {
            let before = old_values.get(key).unwrap_or(&serde_json::Value::Null);
            if before != value {
                changes.push(format!("{section}.{key}: {before} -> {value}"));
            }
        }
    }
    changes
}

fn write_resolved_config(output_dir: &Path, config: &RunConfig) -> Result<()> {
    let path = output_dir.join("run_config.toml");
    let text = toml::to_string_pretty(&config.resolved).map_err(|e| TrainError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

/// `metrics.jsonl`: one JSON object per logged step; a resumed run appends, a fresh one starts
/// the file anew.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(path: &Path, append: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, log: &StepLog) -> Result<()> {
        let line = serde_json::to_string(log).expect("a step log serialises");
        writeln!(self.file, "{line}").map_err(|e| TrainError::io(&self.path, e))
    }
}
