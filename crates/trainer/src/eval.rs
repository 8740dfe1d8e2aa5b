//! Mean loss and perplexity over a dataset, without gradients.

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use ember_data::{Dataset, eval_batches};
use ember_model::GemmaForCausalLM;

use crate::distributed::{Collective, Solo};
use crate::error::{Result, TrainError};
use crate::grads::MicroBatch;
use crate::kernels::{BurnKernels, Favour, TrainKernels, forward_layers};

/// Loss per trained token over a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// Evaluates `model` on every sample of `dataset`, `batch_size` at a time, each batch padded
/// to a multiple of `pad_to_multiple_of` tokens, with `kernels` computing the layers and the
/// loss (burn's where they cannot run this model): on CUDA the training step's own kernels,
/// which need no compiling or tuning per shape.
pub fn evaluate<B: Backend>(
    model: &GemmaForCausalLM<B>,
    kernels: &dyn TrainKernels<B>,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    pad_to_multiple_of: usize,
) -> Result<EvalResult> {
    evaluate_across(
        model,
        kernels,
        dataset,
        batch_size,
        pad_id,
        pad_to_multiple_of,
        &mut Solo,
    )
}

/// [`evaluate`] shared by the ranks of a data-parallel run: each computes the batches whose
/// index is its rank modulo the world size, and the sums are added across ranks.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_across<B: Backend>(
    model: &GemmaForCausalLM<B>,
    kernels: &dyn TrainKernels<B>,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    pad_to_multiple_of: usize,
    collective: &mut dyn Collective,
) -> Result<EvalResult> {
    check_token_ids(dataset, model.config.vocab_size)?;
    let kernels: &dyn TrainKernels<B> = match kernels.unsupported(model) {
        Some(_) => &BurnKernels,
        None => kernels,
    };
    let (rank, world) = (collective.rank(), collective.world_size());
    let (mut sum, mut tokens) = (0.0, 0);
    for batch in eval_batches(dataset, batch_size, pad_id).skip(rank).step_by(world) {
        let micro = MicroBatch::from_batch(&batch, pad_to_multiple_of);
        // No backward follows: nothing is worth keeping for one.
        let mut step = kernels.prepare(model, &micro, Favour::Memory)?;
        let x = forward_layers(model, step.as_mut(), &micro)?;
        sum += step.loss(x)?.into_scalar().elem::<f64>();
        tokens += micro.num_trained_tokens;
    }
    if world > 1 {
        let mut sums = [sum, tokens as f64];
        collective.sum_f64(&mut sums)?;
        (sum, tokens) = (sums[0], sums[1] as usize);
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
