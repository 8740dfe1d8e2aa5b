//! Mean loss and perplexity over a dataset, without gradients.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use ember_data::{Dataset, eval_batches};
use ember_model::{GemmaForCausalLM, cross_entropy_sum};

use crate::error::{Result, TrainError};
use crate::grads::MicroBatch;

/// Loss per trained token over a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// Evaluates `model` on every sample of `dataset`, `batch_size` at a time, each batch padded
/// to a multiple of `pad_to_multiple_of` tokens (on GPUs every new shape compiles kernels).
pub fn evaluate<B: Backend>(
    model: &GemmaForCausalLM<B>,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    pad_to_multiple_of: usize,
) -> Result<EvalResult> {
    check_token_ids(dataset, model.config.vocab_size)?;
    let device = model.model.embed_tokens.weight.device();
    let (mut sum, mut tokens) = (0.0, 0);
    for batch in eval_batches(dataset, batch_size, pad_id) {
        let micro = MicroBatch::from_batch(&batch, pad_to_multiple_of);
        let hidden = model.hidden_states(micro.input::<B>(&device), None);
        let [b, t, h] = hidden.dims();
        let logits: Tensor<B, 3> = model.logits(hidden.reshape([1, b * t, h]));
        let vocab = logits.dims()[2];
        sum += cross_entropy_sum(logits.reshape([b * t, vocab]), micro.targets::<B>(&device))
            .into_scalar()
            .elem::<f64>();
        tokens += micro.num_trained_tokens;
    }
    let loss = sum / tokens.max(1) as f64;
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
    })
}

/// Fails when a sample holds a token id the model has no embedding for: a tokenizer of
/// another model (the lookup would fail inside the backend).
pub fn check_token_ids(dataset: &Dataset, vocab_size: usize) -> Result<()> {
    for (index, sample) in dataset.iter().enumerate() {
        if let Some(&id) = sample.input_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TrainError::TokenOutOfVocab {
                sample: index,
                id,
                vocab_size,
            });
        }
    }
    Ok(())
}
