//! Decode speed: `rows` random prompts decoded together, greedy tokens with the KV cache, on
//! the run's kernels where they decode (Ember's CUDA kernels), else burn's.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::Backend;
use ember_model::{GemmaForCausalLM, GenerationConfig, SamplingConfig, generate_batch_with};
use ember_trainer::kernels::TrainKernels;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::commands::generate::batch_decoder;

/// Generates `new_tokens` after each of `rows` random `prompt_len`-token prompts, twice (the
/// first run compiles kernels), and reports the second: the prefills' time and the decoding
/// steps' tokens/s over all rows.
#[allow(clippy::too_many_arguments)]
pub fn measure<B: Backend>(
    model: &GemmaForCausalLM<B>,
    kernels: &dyn TrainKernels<B>,
    rows: usize,
    prompt_len: usize,
    new_tokens: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let prompts: Vec<Vec<u32>> = (0..rows)
        .map(|_| {
            (0..prompt_len)
                .map(|_| rng.random_range(0..model.config.vocab_size as u32))
                .collect()
        })
        .collect();
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        stop_tokens: Vec::new(),
        sampling: SamplingConfig::default(),
    };
    let mut result = json!(null);
    for _ in 0..2 {
        let start = Instant::now();
        // Each prefill ends with its row's first token; the steps after the last prefill decode.
        let mut prefilled = None;
        let mut firsts = 0;
        let steps = |rows, capacity| batch_decoder(model, kernels, device, rows, capacity, prompt_len);
        let tokens = generate_batch_with(&model.config, &prompts, &config, steps, |_, _| {
            firsts += 1;
            if firsts == rows {
                prefilled = Some(start.elapsed());
            }
            Ok(())
        })?;
        let total = start.elapsed();
        let prefill = prefilled.unwrap_or(total);
        let decode_s = (total - prefill).as_secs_f64();
        let generated: usize = tokens.iter().map(Vec::len).sum();
        result = json!({
            "rows": rows,
            "prompt_tokens": prompt_len,
            "new_tokens": generated,
            "prefill_s": prefill.as_secs_f64(),
            "decode_tokens_per_s": generated.saturating_sub(rows) as f64 / decode_s.max(1e-9),
        });
    }
    Ok(result)
}
