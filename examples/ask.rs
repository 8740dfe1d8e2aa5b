//! Step 5 of the seed recipe: ask the fine-tuned model, with the prompt it was trained on.
//!
//!     cargo run --example train    # first: writes outputs/example/adapter
//!     cargo run --example ask
//!     cargo run --example ask -- --model ~/models/gemma-2b-it \
//!         --adapter outputs/example/adapter --instruction "Name three uses of a paperclip." --input ""
//!
//! On the CPU; `ember generate --adapter DIR --prompt "..."` does the same on CUDA or WGPU.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::NdArray;
use burn::tensor::DType;
use clap::Parser;
use ember_data::TextStream;
use ember_data::alpaca_seed_prompt;
use ember_lora::load_adapter;
use ember_model::{GenerationConfig, LoadOptions, ModelSource, SamplingConfig};

#[derive(Parser)]
struct Args {
    /// The base checkpoint the adapter was trained on.
    #[arg(long, default_value = "fixtures/models/gemma3")]
    model: PathBuf,
    /// The PEFT adapter directory (the train example's, or any PEFT LoRA for this model).
    #[arg(long, default_value = "outputs/example/adapter")]
    adapter: PathBuf,
    #[arg(long, default_value = "Write the word backwards.")]
    instruction: String,
    #[arg(long, default_value = "garden")]
    input: String,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Default::default();
    let source = ModelSource::open(&args.model)?;
    let base = source.load::<NdArray>(&LoadOptions::new(DType::F32), &device)?;
    let (model, _) = load_adapter(base, &args.adapter).with_context(|| {
        format!(
            "loading the adapter from {} (run the train example first, or pass --adapter)",
            args.adapter.display()
        )
    })?;
    let tokenizer = source.tokenizer()?;

    // The training template with a space in the response slot, as the seed asks; the model
    // writes the answer and, trained with EOS after every response, stops with <eos>.
    let prompt = alpaca_seed_prompt(&args.instruction, &args.input);
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(), // greedy
    };
    print!("{prompt}");
    let ids = tokenizer.encode(&prompt)?;
    let mut stream = TextStream::new(&tokenizer, &ids);
    model.generate(&ids, &config, &device, |token| {
        print!("{}", stream.push(token)?);
        let _ = std::io::stdout().flush(); // a closed stdout only loses the echo
        Ok(())
    })?;
    println!("{}", stream.finish()?);
    Ok(())
}
