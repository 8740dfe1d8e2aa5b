use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, ElementConversion, Int, Tensor, backend::Backend};

/// Label value of positions that are not trained (padding, prompts), as in transformers.
pub const IGNORE_INDEX: i64 = -100;

/// Sum of cross-entropies of `logits` `[n, vocab]` against `targets` `[n]`, computed in f32;
/// targets equal to [`IGNORE_INDEX`] count for nothing.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let targets = targets.reshape([n, 1]);
    let ignored = targets.clone().equal_elem(IGNORE_INDEX);
    let safe_targets = targets.mask_fill(ignored.clone(), 0);
    let picked = log_softmax(logits.cast(DType::F32), 1).gather(1, safe_targets); // [n, 1]
    picked.neg().mask_fill(ignored, 0.0).sum()
}

/// Next-token targets: position `t` of each row predicts label `t + 1`; the last position
/// predicts nothing. This is the shift transformers applies inside its causal-LM loss.
pub fn shift_labels(labels: &[i64], seq: usize) -> Vec<i64> {
    labels
        .chunks(seq)
        .flat_map(|row| row[1..].iter().copied().chain(std::iter::once(IGNORE_INDEX)))
        .collect()
}

/// Sum of next-token cross-entropies and the number of trained tokens, for logits
/// `[batch, seq, vocab]` and labels `[batch, seq]`. `sum / count` is transformers' loss;
/// the sum lets a caller normalise over a whole accumulation window.
pub fn causal_lm_loss_sum<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> (Tensor<B, 1>, usize) {
    let [batch, seq, vocab] = logits.dims();
    let n = batch * (seq - 1);
    let logits = logits.narrow(1, 0, seq - 1).reshape([n, vocab]);
    let targets = labels.narrow(1, 1, seq - 1).reshape([n]);
    let count = targets
        .clone()
        .not_equal_elem(IGNORE_INDEX)
        .int()
        .sum()
        .into_scalar()
        .elem::<i64>() as usize;
    (cross_entropy_sum(logits, targets), count)
}
