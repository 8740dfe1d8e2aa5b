use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::lora::Lora;
use crate::matmul::matmul;

/// A bias-free projection stored in the Hugging Face layout `[out_features, in_features]`,
/// with an optional LoRA adapter.
///
/// Keeping the checkpoint's layout makes loading, PEFT export and merging a straight copy;
/// the one transpose lives here, in the matmul.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> Linear<B> {
    /// `[.., in] -> [.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let base = matmul(x.clone(), self.weight.val().transpose().unsqueeze::<D>());
        match &self.lora {
            Some(lora) => lora.add_to(base, x),
            None => base,
        }
    }

    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        self.weight.val().dims()
    }
}
