//! Everything a run needs before its first step: data, the model with its adapters, the
//! optimizer, the schedule and the output directory, fresh or restored from a checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use ember_data::{Dataset, Loader, LoaderOptions};
use ember_lora::{CONFIG_FILE, LoraConfig, adapters, add_lora, load_adapter, load_adapter_as, peft_key};
use ember_model::{GemmaForCausalLM, LoadOptions, ModelSource};

use crate::checkpoint::{self, FORMAT_VERSION, TrainerState};
use crate::config::{OptimKind, RunConfig};
use crate::error::{Result, TrainError};
use crate::estimate::plan;
use crate::eval::check_token_ids;
use crate::grads::Checkpointing;
use crate::kernels::TrainKernels;
use crate::optim::{AdamW, AdamW8bit, AdamWConfig, Optimizer, StateTensors};
use crate::output_dir::{MetricsLog, OutputDir};
use crate::resume;
use crate::schedule::Schedule;
use crate::step::StepSettings;
use crate::trainer::{Start, TrainSummary};

/// A run ready for its next step.
pub(crate) struct Run<B: AutodiffBackend> {
    pub model: GemmaForCausalLM<B>,
    pub optimizer: Box<dyn Optimizer<B::InnerBackend>>,
    pub loader: Loader,
    pub eval_set: Option<Dataset>,
    pub pad_id: u32,
    /// Optimizer steps already taken.
    pub step: usize,
    pub schedule: Schedule,
    pub settings: StepSettings,
    /// Rank 0's alone: the other ranks of a data-parallel run write nothing.
    pub output: Option<OutputDir>,
    pub metrics: Option<MetricsLog>,
    /// What every checkpoint of this run records; `global_step` and `loader` are filled in
    /// at each save.
    pub state: TrainerState,
    pub resume_changes: Vec<String>,
}

/// What [`prepare`] found.
pub(crate) enum Prepared<B: AutodiffBackend> {
    Ready(Box<Run<B>>),
    /// A resumed checkpoint is already at or past the run's last step: nothing to train.
    Finished(TrainSummary),
}

/// A checkpoint being resumed, read before anything is loaded onto the device.
struct Resumed {
    dir: PathBuf,
    state: TrainerState,
    optimizer: StateTensors,
}

/// Prepares rank `rank` of a run of `world_size` ranks (0 of 1 for a single process).
pub(crate) fn prepare<B: AutodiffBackend>(
    config: &RunConfig,
    start: Start,
    device: &B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    (rank, world_size): (usize, usize),
) -> Result<Prepared<B>> {
    let args = &config.training;
    let source = ModelSource::open(&config.model.path)?;
    let offload = plan(config, source.config(), device, dtype, kernels)?.offload;
    let tokenizer = source.tokenizer()?;
    let splits = ember_data::load(&config.data, &tokenizer)?;
    let vocab = source.config().vocab_size;
    check_token_ids(&splits.train, vocab)?;
    if let Some(eval_set) = &splits.eval {
        check_token_ids(eval_set, vocab)?;
    }
    let train_set = Arc::new(splits.train);
    let options = LoaderOptions::new(&config.data, args.per_device_train_batch_size, tokenizer.pad_id());
    let loader = Loader::new(train_set.clone(), options)?;
    let signature = resume::model_signature(source.config());
    let settings_json = resume::run_settings(config);

    let resumed = match start {
        Start::Fresh => None,
        Start::Resume(dir) => {
            let (state, optimizer) = checkpoint::load_state(&dir)?;
            let saved_lora = LoraConfig::from_file(&dir.join(CONFIG_FILE))?;
            let current = resume::Current {
                config,
                signature: &signature,
                data_fingerprint: loader.position().fingerprint,
                world_size,
            };
            resume::check(&dir, &state, &saved_lora, &current)?;
            if state.world_size != world_size {
                tracing::warn!(
                    "resuming a run of {} rank(s) on {world_size}: each step covers the same micro-batches",
                    state.world_size
                );
            }
            Some(Resumed { dir, state, optimizer })
        }
    };
    let total_steps = match args.max_steps {
        Some(steps) => steps,
        None => {
            let micro = (args.num_train_epochs * loader.batches_per_epoch() as f64).ceil() as usize;
            micro.div_ceil(args.gradient_accumulation_steps * world_size).max(1)
        }
    };
    if let Some(resumed) = &resumed
        && resumed.state.global_step >= total_steps
    {
        return Ok(Prepared::Finished(TrainSummary {
            steps: resumed.state.global_step,
            total_steps,
            interrupted: false,
            final_loss: None,
            last_checkpoint: resumed.dir.clone(),
            eval: None,
            resume_changes: Vec::new(),
        }));
    }

    let run_id = match &resumed {
        Some(resumed) => resumed.state.run_id.clone(),
        None => new_run_id(),
    };
    let output = match rank {
        0 => Some(OutputDir::claim(args, &run_id)?),
        _ => None,
    };
    let load = LoadOptions {
        four_bit: config.model.four_bit(Some(dtype), &config.file)?,
        ..LoadOptions::new(dtype)
    };
    let base = source.load::<B>(&load, device)?;
    let mut optimizer = new_optimizer::<B>(config);
    let (model, loader, step, resume_changes) = match resumed {
        None => {
            let model = match &config.init_from {
                Some(dir) => load_adapter_as(base, dir, &config.lora)?,
                None => add_lora(base, &config.lora, args.seed)?,
            };
            (model, loader, 0, Vec::new())
        }
        Some(Resumed {
            dir,
            state,
            optimizer: optimizer_state,
        }) => {
            let changes = resume::changed_settings(&state.settings, &settings_json);
            for change in &changes {
                tracing::warn!("resuming with a changed setting: {change}");
            }
            let (model, _) = load_adapter(base, &dir)?;
            restore_optimizer(optimizer.as_mut(), optimizer_state, &model, &dir, device)?;
            let loader = Loader::resume(train_set, options, state.loader)?;
            (model, loader, state.global_step, changes)
        }
    };
    let metrics = match &output {
        Some(output) => {
            output.write_config(config)?;
            Some(output.metrics((step > 0).then_some(step))?)
        }
        None => None,
    };
    let warmup_steps = match args.warmup_steps {
        0 => Schedule::warmup_from_ratio(args.warmup_ratio, total_steps),
        n => n,
    };
    let state = TrainerState {
        format_version: FORMAT_VERSION,
        global_step: step,
        total_steps,
        loader: loader.position(),
        model_signature: signature,
        optim: format!("{:?}", args.optim),
        settings: settings_json,
        run_id,
        world_size,
    };
    Ok(Prepared::Ready(Box::new(Run {
        model,
        optimizer,
        loader,
        eval_set: splits.eval,
        pad_id: tokenizer.pad_id(),
        step,
        schedule: Schedule {
            kind: args.lr_scheduler_type,
            peak_lr: args.learning_rate,
            warmup_steps,
            total_steps,
        },
        settings: StepSettings {
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            checkpointing: match args.gradient_checkpointing {
                true => Checkpointing::Layers { offload },
                false => Checkpointing::Off,
            },
            profile: false,
            memory_probe: None,
        },
        output,
        metrics,
        state,
        resume_changes,
    })))
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

/// Loads a checkpoint's optimizer state and checks that it is for the adapter's tensors: state
/// of another size would fail inside the first update.
fn restore_optimizer<B: AutodiffBackend>(
    optimizer: &mut dyn Optimizer<B::InnerBackend>,
    state: StateTensors,
    model: &GemmaForCausalLM<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<()> {
    let error = |message: String| TrainError::Checkpoint {
        path: dir.join(checkpoint::OPTIMIZER_FILE),
        message,
    };
    optimizer.load_state(state, device).map_err(error)?;
    let adapter: BTreeMap<String, Vec<usize>> = (model.model.layers.iter().enumerate())
        .flat_map(|(i, layer)| adapters(i, layer))
        .flat_map(|(path, lora)| {
            [('A', &lora.a), ('B', &lora.b)].map(|(m, p)| (peft_key(&path, m), p.val().dims().to_vec()))
        })
        .collect();
    for (name, len) in optimizer.state_sizes() {
        let Some(shape) = adapter.get(&name) else {
            return Err(error(format!(
                "it holds state for `{name}`, which the checkpoint's adapter does not have"
            )));
        };
        let size: usize = shape.iter().product();
        if size != len {
            return Err(error(format!(
                "the state of `{name}` is for {len} values, but the adapter tensor has {size} \
                 ({shape:?}): the optimizer state belongs to another adapter"
            )));
        }
    }
    Ok(())
}

/// A new run's id: the time and the process id, hashed (distinct for runs of one directory).
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
