//! Step 3 of the seed recipe: format an instruction dataset with the seed's Alpaca-style
//! template and EOS, tokenize it, and show one sample with its labels.
//!
//!     cargo run --example data
//!     cargo run --example data -- --completion-only --index 3
//!     cargo run --example data -- --model ~/models/gemma-2b-it --data data/webGPT_x_dolly.parquet
//!
//! The data needs `instruction`, `input` and `output` columns (JSONL, JSON, Parquet or CSV).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use ember_data::{ALPACA_SEED, DataConfig, IGNORE_INDEX, TemplateSpec, Tokenizer, TrainOn, mark_trained};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory whose `tokenizer.json` is used.
    #[arg(long, default_value = "fixtures/models/gemma3")]
    model: PathBuf,
    /// Dataset file, directory or glob. Default: the tiny instruction set that ships with Ember.
    #[arg(long, default_value = "datasets/tiny-instructions.jsonl")]
    data: String,
    /// Which sample to show.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Train on the response and its EOS only, instead of every token as the seed does.
    #[arg(long)]
    completion_only: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tokenizer = Tokenizer::from_file(args.model.join("tokenizer.json"))?;

    // The seed's formatting: its template, then EOS after the response so that the model
    // learns to stop; every token carries loss; at most 2048 tokens a sample.
    let mut data = DataConfig::new(args.data);
    data.template = Some(TemplateSpec::AlpacaSeed);
    data.train_on = if args.completion_only {
        TrainOn::Completion
    } else {
        TrainOn::All
    };
    data.max_seq_length = 2048;
    let splits = ember_data::load(&data, &tokenizer)?;
    let dataset = splits.train;
    println!("template:\n{ALPACA_SEED}<eos>\n");
    println!(
        "{} samples, {} tokens, {} of them trained",
        dataset.len(),
        dataset.num_tokens(),
        dataset.num_trained_tokens()
    );

    let sample = dataset
        .get(args.index)
        .with_context(|| format!("there are {} samples", dataset.len()))?;
    println!("\nsample {}, trained tokens inside [[ ]]:", args.index);
    println!("{}", mark_trained(&tokenizer, sample)?);
    // What the trainer gets: the ids, and labels that repeat them where the token is trained
    // and hold -100 (no loss) elsewhere; the model shifts them by one position.
    let labels: Vec<i64> = sample
        .input_ids
        .iter()
        .zip(sample.trained)
        .map(|(&id, &trained)| if trained { id.into() } else { IGNORE_INDEX })
        .collect();
    println!("\ninput_ids {:?}", sample.input_ids);
    println!("labels    {labels:?}");
    Ok(())
}
