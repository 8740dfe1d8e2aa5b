use burn::tensor::{DType, Int, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::config::GemmaConfig;
use crate::error::{ModelError, Result};
use crate::model::{ForwardInput, GemmaForCausalLM};
use crate::sampling::{Sampler, SamplingConfig};

/// When to stop generating.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// Generation ends after producing one of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
    pub sampling: SamplingConfig,
}

/// The model side of one generation: appends `ids` (the prompt, then each new token) to its KV
/// cache and returns the logits of the last of them, soft-capped, as f32. burn's ops
/// ([`GemmaForCausalLM::generate`]) or a backend's own kernels (`ember-cuda`) implement it.
pub trait DecodeStep {
    fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
}

impl<B: Backend> GemmaForCausalLM<B> {
    /// Continues `prompt` token by token with a KV cache: the prompt is processed once,
    /// then one position per step. `on_token` sees each new token as it is chosen.
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        device: &B::Device,
        on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let start = |capacity| Ok(self.decoder(capacity, device));
        generate_with(&self.config, prompt, config, start, on_token)
    }

    /// Generation's steps in burn's ops, with a KV cache of `capacity` positions.
    pub fn decoder<'a>(&'a self, capacity: usize, device: &'a B::Device) -> impl DecodeStep + 'a {
        BurnDecode {
            model: self,
            cache: self.new_cache(capacity),
            device,
        }
    }
}

impl<D: DecodeStep + ?Sized> DecodeStep for Box<D> {
    fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        (**self).step(ids)
    }
}

/// The model side of batched generation: `rows` sequences, each with its own KV cache, whose
/// decoding steps run together (one token of each, so weights are read once per step for all).
pub trait BatchDecodeStep {
    /// Appends `ids` (a prompt) to sequence `row` and returns the logits of the last of them.
    fn prefill(&mut self, row: usize, ids: &[u32]) -> Result<Vec<f32>>;
    /// Appends one token to each listed sequence (`(row, token)`, distinct rows) and returns
    /// each one's logits, in order.
    fn step(&mut self, tokens: &[(usize, u32)]) -> Result<Vec<Vec<f32>>>;
}

impl<D: BatchDecodeStep + ?Sized> BatchDecodeStep for Box<D> {
    fn prefill(&mut self, row: usize, ids: &[u32]) -> Result<Vec<f32>> {
        (**self).prefill(row, ids)
    }

    fn step(&mut self, tokens: &[(usize, u32)]) -> Result<Vec<Vec<f32>>> {
        (**self).step(tokens)
    }
}

/// Where a decoding step's `tokens` (`(sequence, token)`, a sequence's tokens in order) go in
/// their sequences' KV caches of `capacity` positions, `lens` of which are filled: each token's
/// position, and the lengths after the step. The error names the sequence that does not exist
/// or would overflow.
pub fn step_positions(
    lens: &[usize],
    tokens: &[(usize, u32)],
    capacity: usize,
) -> std::result::Result<(Vec<usize>, Vec<usize>), String> {
    let mut after = lens.to_vec();
    let mut positions = Vec::with_capacity(tokens.len());
    for &(sequence, _) in tokens {
        let Some(len) = after.get_mut(sequence) else {
            return Err(format!("sequence {sequence} of a decoder of {} sequences", lens.len()));
        };
        if *len >= capacity {
            return Err(format!(
                "a step of {} tokens does not fit sequence {sequence} at position {}: the decoder's \
                 capacity of {capacity} positions",
                tokens.len(),
                lens[sequence]
            ));
        }
        positions.push(*len);
        *len += 1;
    }
    Ok((positions, after))
}

/// Batched generation on decoders of one sequence each, for kernels without a batched
/// decoder: each row steps alone.
pub struct RowByRow<D>(pub Vec<D>);

impl<D: DecodeStep> BatchDecodeStep for RowByRow<D> {
    fn prefill(&mut self, row: usize, ids: &[u32]) -> Result<Vec<f32>> {
        self.0[row].step(ids)
    }

    fn step(&mut self, tokens: &[(usize, u32)]) -> Result<Vec<Vec<f32>>> {
        tokens.iter().map(|&(row, token)| self.0[row].step(&[token])).collect()
    }
}

/// How many new tokens `prompt` may get: `max_new_tokens`, less what the model's context
/// leaves no room for. Refuses an empty prompt, ids outside the vocabulary and a prompt that
/// fills the context.
fn new_token_budget(model: &GemmaConfig, prompt: &[u32], max_new_tokens: usize) -> Result<usize> {
    if prompt.is_empty() {
        return Err(ModelError::Generation("the prompt is empty".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= model.vocab_size) {
        return Err(ModelError::Generation(format!(
            "token id {bad} is outside the model's vocabulary of {}",
            model.vocab_size
        )));
    }
    // The model's context bounds the KV cache, whatever `max_new_tokens` asks for.
    let context = model.max_position_embeddings;
    if prompt.len() >= context {
        return Err(ModelError::Generation(format!(
            "the prompt has {} tokens, but the model's context (max_position_embeddings) is {context}",
            prompt.len()
        )));
    }
    let budget = max_new_tokens.min(context - prompt.len());
    if budget < max_new_tokens {
        tracing::warn!(
            "at most {budget} new tokens: the prompt's {} and the model's context of {context} \
             (max_position_embeddings) leave no room for {max_new_tokens}",
            prompt.len(),
        );
    }
    Ok(budget)
}

/// A KV cache's positions for `longest` prompt + new tokens: rounded up so that prompts of
/// similar length share compiled GPU kernels, within the model's context.
fn cache_capacity(model: &GemmaConfig, longest: usize) -> usize {
    longest.next_multiple_of(256).min(model.max_position_embeddings)
}

/// The generation loop of [`GemmaForCausalLM::generate`] over any [`DecodeStep`]: checks the
/// prompt against the model's vocabulary and context, sizes the KV cache (`start` receives its
/// capacity), then samples token by token until `max_new_tokens` or a stop token. The one-row
/// case of [`generate_batch_with`].
pub fn generate_with<D: DecodeStep>(
    model: &GemmaConfig,
    prompt: &[u32],
    config: &GenerationConfig,
    start: impl FnOnce(usize) -> Result<D>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let start = |_rows, capacity| Ok(RowByRow(vec![start(capacity)?]));
    let mut generated = generate_batch_with(model, &[prompt.to_vec()], config, start, |_, token| on_token(token))?;
    Ok(generated.remove(0))
}

/// Generation for several prompts at once over a [`BatchDecodeStep`] (`start` receives
/// the rows and the KV caches' capacity): each prompt is prefilled alone, then every unfinished
/// row advances by one token per step. Each row samples with its own sampler from the same
/// seed, so a prompt's tokens are those [`generate_with`] gives it alone. `on_token` sees
/// `(row, token)` as each is chosen.
pub fn generate_batch_with<D: BatchDecodeStep>(
    model: &GemmaConfig,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    start: impl FnOnce(usize, usize) -> Result<D>,
    mut on_token: impl FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Err(ModelError::Generation("there are no prompts".into()));
    }
    let budgets = prompts
        .iter()
        .enumerate()
        .map(|(row, prompt)| {
            // Among several prompts, an error names which.
            new_token_budget(model, prompt, config.max_new_tokens).map_err(|e| match e {
                ModelError::Generation(why) if prompts.len() > 1 => {
                    ModelError::Generation(format!("prompt {}: {why}", row + 1))
                }
                other => other,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let longest = prompts
        .iter()
        .zip(&budgets)
        .map(|(p, n)| p.len() + n)
        .max()
        .unwrap_or(0);
    let mut decoder = start(prompts.len(), cache_capacity(model, longest))?;
    let mut samplers: Vec<Sampler> = prompts.iter().map(|_| Sampler::new(config.sampling.clone())).collect();
    let mut generated = vec![Vec::new(); prompts.len()];
    let mut take = |row: usize, token: u32, generated: &mut Vec<Vec<u32>>| {
        generated[row].push(token);
        on_token(row, token)
    };
    for (row, prompt) in prompts.iter().enumerate() {
        let token = samplers[row].sample(&decoder.prefill(row, prompt)?);
        take(row, token, &mut generated)?;
    }
    loop {
        let live: Vec<(usize, u32)> = generated
            .iter()
            .enumerate()
            .filter_map(|(row, tokens)| {
                let last = *tokens.last()?;
                (tokens.len() < budgets[row] && !config.stop_tokens.contains(&last)).then_some((row, last))
            })
            .collect();
        if live.is_empty() {
            return Ok(generated);
        }
        for ((row, _), logits) in live.iter().zip(decoder.step(&live)?) {
            let token = samplers[*row].sample(&logits);
            take(*row, token, &mut generated)?;
        }
    }
}

/// [`DecodeStep`] in burn's ops, with [`KvCache`].
struct BurnDecode<'a, B: Backend> {
    model: &'a GemmaForCausalLM<B>,
    cache: KvCache<B>,
    device: &'a B::Device,
}

impl<B: Backend> DecodeStep for BurnDecode<'_, B> {
    fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let ids = Tensor::<B, 1, Int>::from_data(ids, self.device).reshape([1, ids.len()]);
        let hidden = self
            .model
            .hidden_states(ForwardInput::cached(ids, &self.cache), Some(&mut self.cache));
        let seq = hidden.dims()[1];
        let logits = self.model.logits(hidden.narrow(1, seq - 1, 1)).cast(DType::F32);
        logits
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Generation(format!("cannot read logits: {e:?}")))
    }
}
