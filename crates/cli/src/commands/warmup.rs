//! `ember warmup`: fills the kernel caches before a run, so that its first step starts without
//! compiling: Ember's CUDA kernels (NVRTC, `~/.cache/ember/kernels`), cuBLASLt's plans and
//! burn's kernels (cubecl's cache) for what a run of `--arch` at `--batch` × `--seq` uses, by one
//! training step and a short generation on a random-weight model of that shape.

use std::time::Instant;

use anyhow::Result;
use ember_trainer::config::OptimKind;

use crate::commands::bench;
use crate::device::{DeviceArgs, KernelChoice};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// gemma-2b, gemma2-2b, gemma2-9b, gemma3-270m, gemma-7b or a model directory's config.
    #[arg(long, default_value = "gemma-2b")]
    pub arch: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 1024)]
    pub seq: usize,
    /// Also the 4-bit (QLoRA) kernels.
    #[arg(long)]
    pub load_in_4bit: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub kernels: KernelChoice,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    eprintln!(
        "ember warmup: compiling the kernels of a {} training step at {} × {} and of generation \
         into the kernel caches",
        args.arch, args.batch, args.seq
    );
    let started = Instant::now();
    let report = bench::measure(bench::Args {
        arch: args.arch,
        batch: args.batch,
        seq: args.seq,
        steps: 1,
        warmup: 0,
        optim: OptimKind::AdamW8bit,
        no_checkpointing: false,
        offload_activations: false,
        load_in_4bit: args.load_in_4bit,
        breakdown: false,
        decode_prompt: Some(16),
        decode_tokens: 4,
        decode_batch: 1,
        peak_tflops: 989.0,
        seed: 0,
        kernels: args.kernels,
        device: args.device,
    })?;
    eprintln!(
        "ember warmup: done in {:.1} s on {} ({} kernels); later runs start from the caches",
        started.elapsed().as_secs_f64(),
        report["device"].as_str().unwrap_or("the device"),
        report["kernels"].as_str().unwrap_or("the run's"),
    );
    Ok(())
}
