//! Shared helpers: a small run config on the fixture model and tiny dataset, and running it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use ember_trainer::config::RunConfig;
use ember_trainer::kernels::BurnKernels;
use ember_trainer::trainer::{Start, StepLog, train};

pub type AD = Autodiff<NdArray<f32>>;

/// LoRA dropout draws from the CPU backend's one global generator, seeded per layer: two tests
/// drawing masks at once would interleave their draws. Tests with dropout hold this.
pub static DROPOUT: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn dropout_alone() -> std::sync::MutexGuard<'static, ()> {
    DROPOUT.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny Gemma 3 fixture on the tiny dataset, all-linear r = 4 adapters, 4 × 2 samples a step.
pub fn config(output_dir: &Path, max_steps: usize, optim: &str, checkpointing: bool) -> RunConfig {
    RunConfig::from_table(
        config_table(output_dir, max_steps, optim, checkpointing),
        Path::new("test.toml"),
    )
    .unwrap()
}

/// [`config`] as a TOML table, to change a setting the way `ember train --set` does.
pub fn config_table(output_dir: &Path, max_steps: usize, optim: &str, checkpointing: bool) -> toml::Table {
    format!(
        r#"
[model]
path = "{model}"

[lora]
r = 4
lora_alpha = 8
target_modules = "all-linear"

[data]
path = "{data}"
max_seq_length = 64

[training]
output_dir = "{out}"
per_device_train_batch_size = 4
gradient_accumulation_steps = 2
max_steps = {max_steps}
learning_rate = 5e-3
warmup_steps = 2
optim = "{optim}"
weight_decay = 0.01
save_steps = 3
seed = 1357
gradient_checkpointing = {checkpointing}
"#,
        model = repo().join("fixtures/models/gemma3").display(),
        data = repo().join("datasets/tiny-instructions.jsonl").display(),
        out = output_dir.display(),
    )
    .parse()
    .unwrap()
}

/// Runs `config` on the CPU; returns the logged losses.
pub fn run(config: &RunConfig, start: Start) -> Vec<f64> {
    run_on::<AD>(config, start, &Default::default())
        .iter()
        .map(|log| log.loss)
        .collect()
}

/// Runs `config` on any autodiff backend; returns every step's log.
pub fn run_on<B: AutodiffBackend>(config: &RunConfig, start: Start, device: &B::Device) -> Vec<StepLog> {
    let mut logs = Vec::new();
    let stop = AtomicBool::new(false);
    train::<B>(config, start, device, DType::F32, &BurnKernels, &stop, |log| {
        logs.push(log.clone())
    })
    .unwrap();
    logs
}
