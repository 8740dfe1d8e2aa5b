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
        let weight = self.weight.val();
        let [_, hidden] = weight.dims();
        let scale = round_to(weight.dtype(), (hidden as f32).sqrt());
        burn::tensor::module::embedding(weight, ids) * scale
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
