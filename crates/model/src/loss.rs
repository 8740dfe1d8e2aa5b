use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, ElementConversion, Int, Tensor, backend::Backend};

/// Label value of positions that are not trained (padding, prompts), as in transformers.
pub const IGNORE_INDEX: i64 = -100;

/// Sum of next-token cross-entropies and the number of trained tokens.
///
/// `logits[:, t]` predicts `labels[:, t + 1]` (the shift transformers applies); positions
/// labelled [`IGNORE_INDEX`] count for nothing. Computed in f32. Returning the sum lets a
/// caller normalise over a whole accumulation window; `sum / count` is transformers' loss.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`
/// - `labels`: `[batch, seq]`
pub fn causal_lm_loss_sum<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> (Tensor<B, 1>, usize) {
    let [batch, seq, vocab] = logits.dims();
    let logits = logits
        .narrow(1, 0, seq - 1)
        .cast(DType::F32)
        .reshape([batch * (seq - 1), vocab]);
    let targets = labels.narrow(1, 1, seq - 1).reshape([batch * (seq - 1), 1]);
    let trained = targets.clone().not_equal_elem(IGNORE_INDEX);
    let count = trained.clone().int().sum().into_scalar().elem::<i64>() as usize;
    let safe_targets = targets.mask_fill(trained.clone().bool_not(), 0);
    let picked = log_softmax(logits, 1).gather(1, safe_targets); // [n, 1]
    let nll = picked.neg().mask_fill(trained.bool_not(), 0.0);
    (nll.sum(), count)
}
