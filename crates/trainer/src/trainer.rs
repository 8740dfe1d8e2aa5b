//! The SFT run: data → adapters → optimizer steps → logs and checkpoints, resumable.
//! [`crate::setup`] prepares a run, the loop below takes its steps, and
//! [`crate::output_dir::OutputDir`] writes what the run leaves behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::checkpoint::{TrainerState, checkpoint_dir};
use crate::config::RunConfig;
use crate::distributed::{Collective, Solo, sum_flag};
use crate::error::{Result, TrainError};
use crate::eval::{EvalResult, evaluate_across};
use crate::grads::MicroBatch;
use crate::kernels::{BurnKernels, TrainKernels};
use crate::setup::{Prepared, Run, prepare};
use crate::step::shared_optimizer_step;

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
    /// Optimizer steps the adapter has had (those of a resumed checkpoint included).
    pub steps: usize,
    /// The step the run was to end at.
    pub total_steps: usize,
    /// `stop` was raised: the run saved a checkpoint and ended early.
    pub interrupted: bool,
    /// The last step's loss; `None` when no step ran (a resumed checkpoint already at or
    /// past `total_steps`).
    pub final_loss: Option<f64>,
    /// The newest checkpoint: the adapter the run ends with.
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
pub fn train<B: AutodiffBackend>(
    config: &RunConfig,
    start: Start,
    device: &B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    stop: &AtomicBool,
    on_log: impl FnMut(&StepLog),
) -> Result<TrainSummary> {
    train_across::<B>(config, start, device, dtype, kernels, &mut Solo, stop, on_log)
}

/// [`train`] as one rank of a data-parallel run whose ranks sum through `collective`: every
/// rank loads the same data and takes the same steps on its share of each step's
/// micro-batches (see [`crate::distributed`]); rank 0 alone writes `output_dir`, and its
/// summary names the checkpoints it wrote. A stop request on any rank stops all of them after
/// the same step.
#[allow(clippy::too_many_arguments)]
pub fn train_across<B: AutodiffBackend>(
    config: &RunConfig,
    start: Start,
    device: &B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    collective: &mut dyn Collective,
    stop: &AtomicBool,
    on_log: impl FnMut(&StepLog),
) -> Result<TrainSummary> {
    let ranks = (collective.rank(), collective.world_size());
    match prepare::<B>(config, start, device, dtype, kernels, ranks)? {
        Prepared::Ready(run) => {
            let kernels: &dyn TrainKernels<B::InnerBackend> = match kernels.unsupported(&run.model.valid()) {
                Some(why) => {
                    tracing::warn!(
                        "the {} kernels cannot train this run ({why}); using burn's",
                        kernels.name()
                    );
                    &BurnKernels
                }
                None => kernels,
            };
            run_steps(config, *run, kernels, collective, stop, on_log)
        }
        Prepared::Finished(summary) => Ok(summary),
    }
}

/// The loop: optimizer steps until `total_steps` or a stop request, logging, evaluating and
/// saving checkpoints as the config asks.
fn run_steps<B: AutodiffBackend>(
    config: &RunConfig,
    mut run: Run<B>,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    collective: &mut dyn Collective,
    stop: &AtomicBool,
    mut on_log: impl FnMut(&StepLog),
) -> Result<TrainSummary> {
    let args = &config.training;
    let total_steps = run.schedule.total_steps;
    let (rank, world) = (collective.rank(), collective.world_size());
    // Every rank draws all of a step's micro-batches from its loader, in the same order.
    let per_step = args.gradient_accumulation_steps * world;
    let evaluate_now = |run: &Run<B>, collective: &mut dyn Collective| -> Result<Option<EvalResult>> {
        run.eval_set
            .as_ref()
            .map(|eval_set| {
                evaluate_across(
                    &run.model.valid(),
                    kernels,
                    eval_set,
                    args.per_device_train_batch_size,
                    run.pad_id,
                    args.pad_to_multiple_of,
                    collective,
                )
            })
            .transpose()
    };
    let mut skipped_in_a_row = 0;
    let mut last_loss = None;
    let mut last_checkpoint = None;
    while run.step < total_steps {
        let started = Instant::now();
        let step = run.step;
        let all: Vec<MicroBatch> = (0..per_step)
            .map(|k| MicroBatch {
                // Distinct per micro-batch and the same after a resume (on any number of
                // ranks): dropout replays exactly.
                seed: args.seed ^ ((step * per_step + k) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
                ..MicroBatch::from_batch(&run.loader.next_batch(), args.pad_to_multiple_of)
            })
            .collect();
        let trained_tokens = all.iter().map(|b| b.num_trained_tokens).sum();
        let tokens: usize = all.iter().map(|b| b.batch * b.seq).sum();
        let window: Vec<MicroBatch> = all.into_iter().skip(rank).step_by(world).collect();
        let lr = run.schedule.lr(step);
        let outcome;
        (run.model, outcome) = shared_optimizer_step(
            run.model,
            &window,
            trained_tokens,
            lr,
            run.settings,
            kernels,
            run.optimizer.as_mut(),
            collective,
        )?;
        run.step += 1;
        let step = run.step;
        skipped_in_a_row = if outcome.skipped { skipped_in_a_row + 1 } else { 0 };
        if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
            return Err(TrainError::Diverged(format!(
                "{skipped_in_a_row} steps in a row had a non-finite loss or gradient (last loss {}); \
                 lower the learning rate or check the data",
                outcome.loss
            )));
        }
        let eval_due = args.eval_steps > 0 && step.is_multiple_of(args.eval_steps);
        let eval_loss = match eval_due {
            true => evaluate_now(&run, collective)?.map(|e| e.loss),
            false => None,
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
        if step.is_multiple_of(args.logging_steps.max(1)) || step == total_steps || eval_loss.is_some() {
            if let Some(metrics) = &mut run.metrics {
                metrics.write(&log)?;
            }
            on_log(&log);
        }
        last_loss = Some(outcome.loss);
        let interrupted = sum_flag(collective, stop.load(Ordering::Relaxed))?;
        if (args.save_steps > 0 && step.is_multiple_of(args.save_steps)) || step == total_steps || interrupted {
            let state = TrainerState {
                global_step: step,
                loader: run.loader.position(),
                ..run.state.clone()
            };
            last_checkpoint = Some(match &run.output {
                Some(output) => output.save(&run.model, &config.lora, run.optimizer.as_ref(), &state)?,
                None => checkpoint_dir(&args.output_dir, step),
            });
        }
        if interrupted {
            return Ok(TrainSummary {
                steps: step,
                total_steps,
                interrupted: true,
                final_loss: last_loss,
                last_checkpoint: last_checkpoint.expect("a stopped run saves a checkpoint"),
                eval: None,
                resume_changes: run.resume_changes,
            });
        }
    }
    Ok(TrainSummary {
        steps: run.step,
        total_steps,
        interrupted: false,
        final_loss: last_loss,
        last_checkpoint: last_checkpoint.expect("the last step saves a checkpoint"),
        eval: evaluate_now(&run, collective)?,
        resume_changes: run.resume_changes,
    })
}
