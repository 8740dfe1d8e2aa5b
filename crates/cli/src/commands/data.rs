use std::path::PathBuf;

use anyhow::{Context, Result};
use ember_data::DatasetReport;
use ember_trainer::config::RunConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run config (TOML): its [data] table, with the tokenizer of its [model].
    #[arg(long)]
    pub config: PathBuf,
    /// How many formatted samples to show, trained tokens marked [[like this]].
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
}

/// Shows what training would see: sample counts, token-length percentiles, truncated and
/// dropped samples, and the first samples as formatted, with the trained tokens marked.
pub fn run(args: Args) -> Result<()> {
    let config = RunConfig::from_file(&args.config)?;
    let tokenizer = super::generate::open_model(&config.model.path)?
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {}", config.model.path.display()))?;
    let splits = ember_data::load(&config.data, &tokenizer)?;
    print!(
        "{}",
        DatasetReport::new(&config.data, &splits, &tokenizer, args.examples)?
    );
    Ok(())
}
