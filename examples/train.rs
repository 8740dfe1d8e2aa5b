//! Step 4 of the seed recipe: fine-tune with the seed's training arguments and save the
//! LoRA adapter in PEFT's format.
//!
//!     cargo run --example train
//!     cargo run --example train -- --model ~/models/gemma-2b-it \
//!         --data data/webGPT_x_dolly.parquet --gradient-accumulation-steps 16
//!
//! By default it trains the tiny random-weight model on the tiny dataset that ship with Ember,
//! one batch of 8 per step instead of the seed's 16, in about a minute: watch the loss fall,
//! don't expect wisdom. It runs on the CPU; `ember train --config configs/gemma-2b-it.toml`
//! is the same run from a config file, on CUDA or WGPU when there is a GPU.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::DType;
use clap::Parser;
use ember_data::DataConfig;
use ember_lora::{CONFIG_FILE, LoraConfig, WEIGHTS_FILE};
use ember_trainer::config::{OptimKind, RunConfig, TrainingArgs};
use ember_trainer::kernels::BurnKernels;
use ember_trainer::schedule::ScheduleKind;
use ember_trainer::trainer::{Start, train};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory. Default: the tiny random-weight Gemma 3 that ships with Ember.
    #[arg(long, default_value = "fixtures/models/gemma3")]
    model: PathBuf,
    /// Instruction data (instruction, input, output). Default: Ember's tiny instruction set.
    #[arg(long, default_value = "datasets/tiny-instructions.jsonl")]
    data: String,
    /// Where checkpoints and the adapter go.
    #[arg(long, default_value = "outputs/example")]
    output_dir: PathBuf,
    /// Optimizer steps (the seed: 10).
    #[arg(long, default_value_t = 10)]
    max_steps: usize,
    /// Batches of 8 per optimizer step (the seed: 16, so 128 samples a step).
    #[arg(long, default_value_t = 1)]
    gradient_accumulation_steps: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The seed's TrainingArguments; what is not named keeps transformers' default.
    let training = TrainingArgs {
        output_dir: args.output_dir.clone(),
        // Running the example again starts over instead of refusing the directory.
        overwrite_output_dir: true,
        per_device_train_batch_size: 8,
        gradient_accumulation_steps: args.gradient_accumulation_steps,
        max_steps: Some(args.max_steps),
        learning_rate: 5e-4,
        lr_scheduler_type: ScheduleKind::Linear,
        warmup_steps: 2,
        optim: OptimKind::AdamW8bit,
        weight_decay: 0.01,
        gradient_checkpointing: true,
        logging_steps: 1,
        seed: 1357,
        ..TrainingArgs::default()
    };
    // Steps 2 and 3: the seed's adapter and data formatting are the defaults; its seed also
    // shuffles the data.
    let mut data = DataConfig::new(args.data);
    data.seed = 1357;
    let config = RunConfig::new(&args.model, LoraConfig::seed_recipe(), data, training)?;

    // `stop` lets a Ctrl-C handler end the run with a checkpoint (`ember train` installs one).
    let stop = AtomicBool::new(false);
    // The CPU in f32. The function is generic over burn's backends: `ember train` calls it with
    // CUDA or WGPU, and bf16 where the GPU supports it (the seed's `bf16 = is_bf16_supported()`).
    let device = Default::default();
    let summary = train::<Autodiff<NdArray>>(&config, Start::Fresh, &device, DType::F32, &BurnKernels, &stop, |log| {
        println!(
            "step {}/{}  loss {:.4}  learning rate {:.2e}  grad norm {:.3}",
            log.step, log.total_steps, log.loss, log.learning_rate, log.grad_norm
        );
    })?;

    // A checkpoint is the PEFT adapter plus the optimizer state for resuming. The seed's
    // `model.save_pretrained(...)` keeps the adapter only: its two PEFT files.
    let adapter = args.output_dir.join("adapter");
    std::fs::create_dir_all(&adapter)?;
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        std::fs::copy(summary.last_checkpoint.join(file), adapter.join(file))?;
    }
    println!(
        "final loss {:.4}; PEFT adapter in {}",
        summary.final_loss.unwrap_or(f64::NAN),
        adapter.display()
    );
    Ok(())
}
