use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// A bias-free projection stored in the Hugging Face layout `[out_features, in_features]`.
///
/// Keeping the checkpoint's layout makes loading, PEFT export and merging a straight copy;
/// the one transpose lives here, in the matmul.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Linear<B> {
    /// `[.., in] -> [.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        x.matmul(self.weight.val().transpose().unsqueeze::<D>())
    }

    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        self.weight.val().dims()
    }
}
