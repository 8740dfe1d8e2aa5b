//! `ember`: fine-tune Gemma models with LoRA. This file only parses and dispatches.

mod commands;
mod device;
mod four_bit;
mod launch;
mod memory;
mod ranges;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "Fine-tune Gemma models with LoRA, in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a LoRA adapter as a run config says (`configs/*.toml`).
    Train(commands::train::Args),
    /// Show what training would see: counts, lengths, formatted samples with trained tokens marked.
    Data(commands::data::Args),
    /// Mean loss and perplexity of a model (and adapter) over a dataset.
    Eval(commands::eval::Args),
    /// Continue a prompt with a model, streaming tokens as they are chosen.
    Generate(commands::generate::Args),
    /// Draw a run's loss curve (metrics.jsonl) as an SVG picture.
    Plot(commands::plot::Args),
    /// Training speed and memory on a random-weight model of a real Gemma shape.
    Bench(commands::bench::Args),
    /// Fill the kernel caches ahead of a run: one training step and a short generation of a
    /// Gemma shape on random weights, so the run's first step compiles nothing.
    Warmup(commands::warmup::Args),
    /// Compare a model's logits with transformers' for the same batch (a safetensors reference).
    Compare(commands::compare::Args),
    /// Compare a training step's loss and adapter gradients from the chosen kernels with burn's
    /// reference kernels (and PEFT's, for the fixtures).
    CheckGrads(commands::check_grads::Args),
    /// Describe a checkpoint (architecture, layer types, parameters, memory) and check its
    /// tensors and tokenizer against its config.
    Inspect(commands::inspect::Args),
    /// Rewrite an adapter as a clean PEFT directory, or merge it into a full checkpoint.
    Export(commands::export::Args),
    /// Convert a GGUF model (llama.cpp's format) into a Hugging Face checkpoint directory.
    Convert(commands::convert::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match Cli::parse().command {
        Command::Train(args) => commands::train::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Warmup(args) => commands::warmup::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::CheckGrads(args) => commands::check_grads::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Plot(args) => commands::plot::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Convert(args) => commands::convert::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
