use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor, backend::Backend};

/// Token embedding, scaled by `sqrt(hidden_size)` rounded to the model dtype first
/// (transformers multiplies by a scalar tensor of the activation dtype).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[vocab, hidden]`, also the tied LM head.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// `[batch, seq]` token ids -> `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let scale = self.scale();
        burn::tensor::module::embedding(self.weight.val(), ids) * scale
    }

    /// The factor embeddings are scaled by: `sqrt(hidden_size)` as stored in the model dtype.
    pub fn scale(&self) -> f32 {
        let [_, hidden] = self.weight.dims();
        round_to(self.weight.dtype(), (hidden as f32).sqrt())
    }
}

/// `value` as it is stored in `dtype`.
fn round_to(dtype: DType, value: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(value).to_f32(),
        DType::F16 => half::f16::from_f32(value).to_f32(),
        _ => value,
    }
}
