//! The final norm, LM head and cross-entropy of a training step, with their explicit backward,
//! in chunks of rows so that the `[tokens, vocab]` logits never exist all at once.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor};

use crate::loss::{IGNORE_INDEX, cross_entropy_sum};
use crate::matmul::{matmul, matmul_transposed};
use crate::model::GemmaForCausalLM;

/// Rows of hidden states per chunk: bounds the logits held at once (Gemma's 256k vocabulary
/// makes 2048 rows 2 GiB of f32 logits).
pub const HEAD_CHUNK_ROWS: usize = 2048;

impl<B: Backend> GemmaForCausalLM<B> {
    /// The summed cross-entropy `[1]` of the last decoder layer's output `x` `[n, width]`
    /// against `targets` `[n]` ([`IGNORE_INDEX`] counts for nothing), and the gradient of
    /// `sum / normaliser` with respect to `x`. Computes what [`Self::final_norm`],
    /// [`Self::logits`] and [`crate::cross_entropy_sum`] compute, in the same dtypes.
    pub fn head_loss(
        &self,
        x: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
        normaliser: f64,
    ) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let [n, _] = x.dims();
        let mut losses = Vec::new();
        let mut grads = Vec::new();
        for start in (0..n).step_by(HEAD_CHUNK_ROWS) {
            let len = HEAD_CHUNK_ROWS.min(n - start);
            let (loss, grad) = self.head_chunk(
                x.clone().narrow(0, start, len),
                targets.clone().narrow(0, start, len),
                normaliser,
            );
            losses.push(loss);
            grads.push(grad);
        }
        (Tensor::cat(losses, 0).sum(), Tensor::cat(grads, 0))
    }

    /// The summed cross-entropy `[1]` of `x` `[n, hidden]` against `targets`, without a
    /// gradient (evaluation): what [`Self::head_loss`] sums, in the same chunks of rows.
    pub fn head_loss_sum(&self, x: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let [n, width] = x.dims();
        let sums = (0..n).step_by(HEAD_CHUNK_ROWS).map(|start| {
            let len = HEAD_CHUNK_ROWS.min(n - start);
            let rows = x.clone().narrow(0, start, len).reshape([1, len, width]);
            let logits = self.logits(self.final_norm(rows));
            let vocab = logits.dims()[2];
            cross_entropy_sum(logits.reshape([len, vocab]), targets.clone().narrow(0, start, len))
        });
        Tensor::cat(sums.collect(), 0).sum()
    }

    fn head_chunk(&self, x: Tensor<B, 2>, targets: Tensor<B, 1, Int>, normaliser: f64) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let [rows, _] = x.dims();
        // Gemma 3n's AltUp versions are merged into one hidden state first.
        let (merged, merge) = self.model.merge_streams_saving(x);
        let normed = self.model.norm.forward(merged.clone());
        let (logits, head) = match &self.lm_head {
            Some(head) => {
                let (logits, saved) = head.forward_saving(normed, None);
                (logits, Some(saved))
            }
            None => (matmul_transposed(normed, self.model.embed_tokens.weight.val()), None),
        };
        let dtype = logits.dtype();
        // Soft-capped in the model dtype, as `logits` does; `tanh` is kept for the backward.
        let (logits, tanh) = match self.config.final_logit_softcapping {
            Some(cap) => {
                let t = (logits / cap).tanh();
                (t.clone() * cap, Some(t))
            }
            None => (logits, None),
        };
        let vocab = logits.dims()[1];
        let targets = targets.reshape([rows, 1]);
        let ignored = targets.clone().equal_elem(IGNORE_INDEX);
        let safe_targets = targets.mask_fill(ignored.clone(), 0);
        let log_probs = log_softmax(logits.cast(DType::F32), 1);
        let picked = log_probs.clone().gather(1, safe_targets.clone());
        let loss = picked.neg().mask_fill(ignored.clone(), 0.0).sum();

        // d(loss)/d(logits) = softmax − one-hot, per trained row, over the normaliser.
        let minus_one = Tensor::<B, 2>::full([rows, 1], -1.0, &merged.device());
        let grad = log_probs
            .exp()
            .scatter(1, safe_targets, minus_one, IndexingUpdateOp::Add)
            .mask_fill(ignored.expand([rows, vocab]), 0.0)
            / normaliser;
        let mut grad = grad.cast(dtype);
        if let Some(t) = tanh {
            grad = grad * (t.square().neg() + 1.0);
        }
        let d_normed = match (&self.lm_head, head) {
            (Some(head), Some(saved)) => head.backward(saved, grad).0,
            _ => matmul(grad, self.model.embed_tokens.weight.val()),
        };
        let d_merged = self.model.norm.backward(merged, d_normed);
        (loss, self.model.merge_streams_backward(merge, d_merged))
    }
}
