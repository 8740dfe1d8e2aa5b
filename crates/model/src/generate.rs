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

/// The generation loop of [`GemmaForCausalLM::generate`] over any [`DecodeStep`]: checks the
/// prompt against the model's vocabulary and context, sizes the KV cache (`start` receives its
/// capacity), then samples token by token until `max_new_tokens` or a stop token.
pub fn generate_with<D: DecodeStep>(
    model: &GemmaConfig,
    prompt: &[u32],
    config: &GenerationConfig,
    start: impl FnOnce(usize) -> Result<D>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
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
    let max_new_tokens = config.max_new_tokens.min(context - prompt.len());
    if max_new_tokens < config.max_new_tokens {
        tracing::warn!(
            "at most {max_new_tokens} new tokens: the prompt's {} and the model's context of {context} \
             (max_position_embeddings) leave no room for {}",
            prompt.len(),
            config.max_new_tokens
        );
    }
    let mut sampler = Sampler::new(config.sampling.clone());
    // Rounded up so that prompts of similar length share compiled GPU kernels.
    let capacity = (prompt.len() + max_new_tokens).next_multiple_of(256).min(context);
    let mut decoder = start(capacity)?;
    let mut step_input = prompt.to_vec();
    let mut generated = Vec::new();
    while generated.len() < max_new_tokens {
        let token = sampler.sample(&decoder.step(&step_input)?);
        generated.push(token);
        on_token(token)?;
        if config.stop_tokens.contains(&token) {
            break;
        }
        step_input = vec![token];
    }
    Ok(generated)
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
