use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor, backend::Backend};

/// Token embedding, scaled by `scale` rounded to the model dtype first (transformers
/// multiplies by a scalar tensor of the weight's dtype).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[vocab, dim]`; the main embedding is also the tied LM head.
    pub weight: Param<Tensor<B, 2>>,
    /// `sqrt(dim)`: `sqrt(hidden_size)` for the main embedding, `sqrt(hidden_size_per_layer_input)`
    /// for Gemma 3n's and 4's per-layer embedding, whose rows pack every layer's slice.
    #[module(skip)]
    pub scale: f64,
}

impl<B: Backend> Embedding<B> {
    /// `[batch, seq]` token ids -> `[batch, seq, dim]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let scale = self.rounded_scale();
        burn::tensor::module::embedding(self.weight.val(), ids) * scale
    }

    /// The factor the embeddings are multiplied by: `scale` as stored in the model dtype.
    pub fn rounded_scale(&self) -> f32 {
        round_to(self.weight.dtype(), self.scale as f32)
    }
}

/// `value` as it is stored in `dtype`.
pub(crate) fn round_to(dtype: DType, value: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(value).to_f32(),
        DType::F16 => half::f16::from_f32(value).to_f32(),
        _ => value,
    }
}
