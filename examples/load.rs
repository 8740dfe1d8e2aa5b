//! Step 1 of the seed recipe: load a Gemma checkpoint and its tokenizer.
//!
//!     cargo run --example load
//!     cargo run --example load -- --model ~/models/gemma-2b-it
//!
//! Any Hugging Face Gemma, Gemma 2 or Gemma 3 directory works as downloaded (`config.json`,
//! `model.safetensors` or its shards, `tokenizer.json`).

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::NdArray;
use burn::module::Module;
use burn::tensor::DType;
use clap::Parser;
use ember_model::{GemmaConfig, LoadOptions, ModelSource};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory. Default: the tiny random-weight Gemma 3 that ships with Ember.
    #[arg(long, default_value = "fixtures/models/gemma3")]
    model: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = GemmaConfig::from_file(args.model.join("config.json"))?;
    // Every tensor is checked against the shape the config implies; f32 on the CPU.
    let source = ModelSource::open(&args.model)?;
    let model = source.load::<NdArray>(&LoadOptions::new(DType::F32), &Default::default())?;
    let tokenizer = source.tokenizer()?;

    println!(
        "{:?}: {} layers, hidden size {}, {} attention heads ({} for keys and values), vocabulary {}",
        config.family,
        config.num_hidden_layers(),
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.vocab_size
    );
    println!("{} parameters", model.num_params());

    // `encode` puts exactly one <bos> in front, as Gemma expects; generation stops at these ids.
    let text = "Write the word backwards.";
    let ids = tokenizer.encode(text)?;
    println!("{text:?} -> {ids:?} -> {:?}", tokenizer.decode(&ids)?);
    println!("stop tokens {:?}", tokenizer.stop_tokens());
    Ok(())
}
