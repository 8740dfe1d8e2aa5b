//! The numbers behind a reference check against transformers: for each prompt, its token ids
//! (with `<bos>`), the f32 logits of its last position and the greedy continuation's ids, as one
//! JSON line each. `fixtures/check_real_gemma3.py` runs it on the converted Gemma 3 270M.
//!
//!     cargo run --release -p ember-examples --example logits -- DIR MAX_NEW_TOKENS PROMPT...

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::NdArray;
use burn::tensor::{DType, Int, Tensor};
use ember_model::{ForwardInput, GenerationConfig, LoadOptions, ModelSource, SamplingConfig};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: logits DIR MAX_NEW_TOKENS PROMPT...";
    let dir = PathBuf::from(args.next().context(usage)?);
    let max_new_tokens: usize = args.next().context(usage)?.parse().context(usage)?;

    let device = Default::default();
    let source = ModelSource::open(&dir)?;
    let model = source.load::<NdArray>(&LoadOptions::new(DType::F32), &device)?;
    let tokenizer = source.tokenizer()?;
    for prompt in args {
        let ids = tokenizer.encode(&prompt)?;
        // The prompt goes through the KV cache as `generate` sends it, so these are the logits
        // its first token is chosen from.
        let mut cache = model.new_cache(ids.len().next_multiple_of(256));
        let input = Tensor::<NdArray, 1, Int>::from_data(ids.as_slice(), &device).reshape([1, ids.len()]);
        let hidden = model.hidden_states(ForwardInput::cached(input, &cache), Some(&mut cache));
        let last = model.logits(hidden.narrow(1, ids.len() - 1, 1)).cast(DType::F32);
        let logits = last
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))?;
        let config = GenerationConfig {
            max_new_tokens,
            stop_tokens: tokenizer.stop_tokens().to_vec(),
            sampling: SamplingConfig::default(), // greedy
        };
        let greedy = model.generate(&ids, &config, &device, |_| Ok(()))?;
        println!(
            "{}",
            serde_json::json!({"ids": ids, "logits": logits, "greedy": greedy})
        );
    }
    Ok(())
}
