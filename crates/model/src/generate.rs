use burn::tensor::{DType, Int, Tensor, backend::Backend};

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

impl<B: Backend> GemmaForCausalLM<B> {
    /// Continues `prompt` token by token with a KV cache: the prompt is processed once,
    /// then one position per step. `on_token` sees each new token as it is chosen.
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        device: &B::Device,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::Generation("the prompt is empty".into()));
        }
        if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(ModelError::Generation(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        // The model's context bounds the KV cache, whatever `max_new_tokens` asks for.
        let context = self.config.max_position_embeddings;
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
        let mut cache = self.new_cache(capacity);
        let mut step_input = prompt.to_vec();
        let mut generated = Vec::new();
        while generated.len() < max_new_tokens {
            let ids = Tensor::<B, 1, Int>::from_data(step_input.as_slice(), device).reshape([1, step_input.len()]);
            let hidden = self.hidden_states(ForwardInput::cached(ids, &cache), Some(&mut cache));
            let seq = hidden.dims()[1];
            let logits = self.logits(hidden.narrow(1, seq - 1, 1)).cast(DType::F32);
            let logits = logits
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| ModelError::Generation(format!("cannot read logits: {e:?}")))?;
            let token = sampler.sample(&logits);
            generated.push(token);
            on_token(token)?;
            if config.stop_tokens.contains(&token) {
                break;
            }
            step_input = vec![token];
        }
        Ok(generated)
    }
}
