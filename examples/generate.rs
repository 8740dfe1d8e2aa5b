//! Load a Gemma checkpoint and ask it something, on the CPU.
//!
//!     cargo run --example generate -- fixtures/models/gemma3 "The capital of France is"

use std::io::Write;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::DType;
use ember_data::TextStream;
use ember_model::{GenerationConfig, LoadOptions, ModelSource, SamplingConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "fixtures/models/gemma3".into()));
    let prompt = args.next().unwrap_or_else(|| "The capital of France is".into());

    let device = Default::default();
    let source = ModelSource::open(&dir)?;
    let model = source.load::<NdArray>(&LoadOptions::new(DType::F32), &device)?;
    let tokenizer = source.tokenizer()?;
    let config = GenerationConfig {
        max_new_tokens: 32,
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(), // greedy
    };

    print!("{prompt}");
    let ids = tokenizer.encode(&prompt)?;
    let mut stream = TextStream::new(&tokenizer, &ids);
    model.generate(&ids, &config, &device, |token| {
        print!("{}", stream.push(token)?);
        let _ = std::io::stdout().flush();
        Ok(())
    })?;
    println!("{}", stream.finish()?);
    Ok(())
}
