//! Decode speed: batch 1, a random prompt, greedy tokens with the KV cache, on the run's
//! kernels where they decode (Ember's CUDA kernels), else burn's.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::Backend;
use ember_model::{GemmaForCausalLM, GenerationConfig, SamplingConfig, generate_with};
use ember_trainer::kernels::TrainKernels;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::commands::generate::decoder;

/// Generates `new_tokens` after a `prompt_len`-token random prompt, twice (the first run
/// compiles kernels), and reports the second: prefill time and decode tokens/s.
pub fn measure<B: Backend>(
    model: &GemmaForCausalLM<B>,
    kernels: &dyn TrainKernels<B>,
    prompt_len: usize,
    new_tokens: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.random_range(0..model.config.vocab_size as u32))
        .collect();
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        stop_tokens: Vec::new(),
        sampling: SamplingConfig::default(),
    };
    let mut result = json!(null);
    for _ in 0..2 {
        let start = Instant::now();
        let mut first = None;
        let steps = |capacity| decoder(model, kernels, device, capacity, prompt.len());
        let tokens = generate_with(&model.config, &prompt, &config, steps, |_| {
            first.get_or_insert_with(|| start.elapsed());
            Ok(())
        })?;
        let total = start.elapsed();
        let prefill = first.unwrap_or(total);
        let decode_s = (total - prefill).as_secs_f64();
        result = json!({
            "prompt_tokens": prompt_len,
            "new_tokens": tokens.len(),
            "prefill_s": prefill.as_secs_f64(),
            "decode_tokens_per_s": (tokens.len().saturating_sub(1)) as f64 / decode_s.max(1e-9),
        });
    }
    Ok(result)
}
