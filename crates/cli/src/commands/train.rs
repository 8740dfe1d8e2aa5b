use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_cuda::NcclGroup;
use ember_model::{GenerationConfig, SamplingConfig, generate_with};
use ember_trainer::checkpoint;
use ember_trainer::config::{DdpBackend, RunConfig};
use ember_trainer::distributed::{Collective, Solo, TcpGroup, WorldEnv, run_fingerprint};
use ember_trainer::estimate::plan;
use ember_trainer::kernels::TrainKernels;
use ember_trainer::trainer::{Start, train_across};
use indicatif::{ProgressBar, ProgressStyle};

use super::generate::{decoder, for_generation, load_model, open_model};
use crate::device::{DeviceArg, DeviceArgs, KernelChoice, TrainTask, run_training_on};
use crate::launch;
use crate::memory;
use crate::ranges;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run config (TOML): [model], [lora], [data], [training].
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from `latest` (the newest checkpoint in output_dir) or a checkpoint directory.
    #[arg(long)]
    pub resume: Option<String>,
    /// Override a config value, e.g. `--set training.max_steps=20` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// After training, answer this instruction with the trained adapter, greedily, in the run's
    /// prompt format (repeatable).
    #[arg(long, value_name = "INSTRUCTION")]
    pub ask: Vec<String>,
    /// How many tokens each `--ask` answer may have.
    #[arg(long, default_value_t = 32, value_parser = ranges::at_least_one)]
    pub ask_max_new_tokens: usize,
    /// What computes the layers and the loss: auto (Ember's CUDA kernels on CUDA, burn's
    /// elsewhere), cuda or burn.
    #[arg(long, value_enum, default_value = "auto")]
    pub kernels: KernelChoice,
    /// Train data-parallel on this many GPUs of this host (torchrun's `--nproc-per-node`): one
    /// process per GPU, each step's micro-batches shared among them. With `--device cpu` the
    /// ranks share the CPU. Across hosts, start `ember train` with torchrun or Slurm instead: it
    /// runs as the rank their RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT say.
    #[arg(long, value_parser = ranges::at_least_one)]
    pub nproc_per_node: Option<usize>,
    /// The port rank 0 listens on with `--nproc-per-node` (default: a free one).
    #[arg(long, requires = "nproc_per_node")]
    pub master_port: Option<u16>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let world = WorldEnv::from_env()?;
    if let Some(nproc) = args.nproc_per_node {
        if let Some(world) = world {
            bail!(
                "--nproc-per-node {nproc}: this process is already rank {} of {} (WORLD_SIZE is set): \
                 drop --nproc-per-node when torchrun or Slurm start the ranks",
                world.rank,
                world.world_size
            );
        }
        return launch::run(nproc, args.master_port);
    }
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", args.config.display()))?;
    for item in &args.overrides {
        apply_override(&mut table, item)?;
    }
    let config = RunConfig::from_table(table, &args.config)?;
    let start = match args.resume.as_deref() {
        None => Start::Fresh,
        Some("latest") => Start::Resume(
            checkpoint::latest(&config.training.output_dir)
                .with_context(|| format!("no checkpoint to resume in {}", config.training.output_dir.display()))?,
        ),
        Some(dir) => Start::Resume(PathBuf::from(dir)),
    };
    let asks = Asks {
        instructions: args.ask,
        max_new_tokens: args.ask_max_new_tokens,
    };
    let Some(world) = world else {
        return run_training_on(
            &args.device,
            args.kernels,
            Train {
                config,
                start,
                asks,
                world: None,
                gpu: None,
            },
        );
    };
    let rank = world.rank;
    let device = DeviceArgs {
        device: args.device.device.for_local_rank(world.local_rank)?,
        ..args.device
    };
    let gpu = match device.device {
        DeviceArg::Cuda(ordinal) => Some(ordinal),
        _ => None,
    };
    let task = Train {
        config,
        start,
        asks,
        world: Some(world),
        gpu,
    };
    run_training_on(&device, args.kernels, task).with_context(|| format!("rank {rank}"))
}

struct Train {
    config: RunConfig,
    start: Start,
    asks: Asks,
    /// This process's place in a data-parallel run of several ranks.
    world: Option<WorldEnv>,
    /// The CUDA device this rank trains on, if it is one: its sums can go through NCCL.
    gpu: Option<usize>,
}

struct Asks {
    instructions: Vec<String>,
    max_new_tokens: usize,
}

impl TrainTask for Train {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<()> {
        // Only rank 0 of a data-parallel run reports; the others speak when they fail.
        let reports = self.world.as_ref().is_none_or(|w| w.rank == 0);
        let bar = match reports {
            true => ProgressBar::new(0),
            false => ProgressBar::hidden(),
        }
        .with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
                .expect("a valid progress template"),
        );
        // Ctrl-C: finish the step, save a checkpoint, exit cleanly.
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
        let mut collective: Box<dyn Collective> = match &self.world {
            Some(world) => {
                let timeout = Duration::from_secs(self.config.training.ddp_timeout);
                let tcp = TcpGroup::connect(world, run_fingerprint(&self.config), timeout)?;
                match (self.config.training.ddp_backend, self.gpu) {
                    (Some(DdpBackend::Nccl) | None, Some(ordinal)) => Box::new(NcclGroup::new(tcp, ordinal, timeout)?),
                    (Some(DdpBackend::Nccl), None) => bail!(
                        "[training] ddp_backend = \"nccl\" sums between CUDA GPUs: run with --device cuda, \
                         or set ddp_backend = \"tcp\" (or leave it out) for this device"
                    ),
                    (Some(DdpBackend::Tcp) | None, _) => Box::new(tcp),
                }
            }
            None => Box::new(Solo),
        };
        let source = open_model(&self.config.model.path)?;
        let plan = plan(&self.config, source.config(), &device, dtype, kernels)?;
        let offloaded = if plan.offload {
            ", layer inputs offloaded to host memory"
        } else {
            ""
        };
        if reports {
            eprintln!("ember: device memory estimate {}{offloaded}", plan.estimate);
        }
        drop(source);
        let mut memory_shown = false;
        let summary = train_across::<Autodiff<B>>(
            &self.config,
            self.start,
            &device,
            dtype,
            kernels,
            collective.as_mut(),
            &stop,
            |log| {
                if !reports {
                    return;
                }
                if !memory_shown {
                    memory_shown = true;
                    memory::log_after_step(log.step, &device, kernels.device_bytes());
                }
                bar.set_length(log.total_steps as u64);
                bar.set_position(log.step as u64);
                let eval = log.eval_loss.map(|l| format!("  eval {l:.4}")).unwrap_or_default();
                bar.set_message(format!(
                    "loss {:.4}  lr {:.2e}  grad norm {:.3}  {:.0} tok/s{eval}",
                    log.loss, log.learning_rate, log.grad_norm, log.tokens_per_second
                ));
                if !bar.is_hidden() {
                    return;
                }
                // No terminal (logs, CI): one line per logged step instead of a bar.
                eprintln!("step {}/{}  {}", log.step, log.total_steps, bar.message());
            },
        )?;
        bar.finish();
        if !reports {
            return Ok(());
        }
        let Some(final_loss) = summary.final_loss else {
            eprintln!(
                "ember: {} is already at step {} and this run ends at step {}: nothing to train \
                 (raise training.max_steps, e.g. --set training.max_steps={}, to continue)",
                summary.last_checkpoint.display(),
                summary.steps,
                summary.total_steps,
                summary.steps + 10
            );
            return Ok(());
        };
        if summary.interrupted {
            eprintln!(
                "ember: interrupted after {} steps; checkpoint saved in {} (continue with --resume latest)",
                summary.steps,
                summary.last_checkpoint.display()
            );
            return Ok(());
        }
        eprintln!(
            "ember: {} steps, final loss {:.4}; adapter (PEFT format) in {}",
            summary.steps,
            final_loss,
            summary.last_checkpoint.display()
        );
        if let Some(eval) = summary.eval {
            eprintln!(
                "ember: eval loss {:.4}, perplexity {:.2} over {} tokens",
                eval.loss, eval.perplexity, eval.tokens
            );
        }
        if !self.asks.instructions.is_empty() {
            ask::<B>(
                &self.config,
                &self.asks,
                &summary.last_checkpoint,
                &device,
                dtype,
                kernels,
            )?;
        }
        Ok(())
    }
}

/// Greedy answers from the base model with the adapter just written, as `ember generate` gives.
fn ask<B: Backend>(
    config: &RunConfig,
    asks: &Asks,
    adapter: &Path,
    device: &B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B>,
) -> Result<()> {
    let source = open_model(&config.model.path)?;
    let four_bit = config.model.four_bit(Some(dtype), &config.file)?;
    let model = for_generation(load_model::<B>(&source, Some(adapter), dtype, four_bit, device)?)?;
    let tokenizer = source.tokenizer()?;
    let data = &config.data;
    let layout = data.columns.layout()?;
    let template = data.template_spec(&layout);
    let generation = GenerationConfig {
        max_new_tokens: asks.max_new_tokens,
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(),
    };
    for instruction in &asks.instructions {
        let prompt = tokenizer.encode(&template.prompt_for(&layout, instruction)?)?;
        let steps = |capacity| decoder(&model, kernels, device, capacity, prompt.len());
        let tokens = generate_with(&model.config, &prompt, &generation, steps, |_| Ok(()))?;
        println!("### {instruction}\n{}\n", tokenizer.decode(&tokens)?.trim_end());
    }
    Ok(())
}

/// `section.key=value`, the value parsed as TOML (so `20`, `1e-4`, `true`, `"text"` work).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((path, raw)) = item.split_once('=') else {
        bail!("--set {item}: expected KEY=VALUE, e.g. training.max_steps=20");
    };
    let value: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the key just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let keys: Vec<&str> = path.split('.').collect();
    let (last, parents) = keys.split_last().expect("split yields one item at least");
    let mut current = table;
    for key in parents {
        current = current
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {item}: `{key}` is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}
