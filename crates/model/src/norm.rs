use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, backend::Backend};

/// Gemma's RMSNorm: computed in f32 as `x / rms(x) * (1 + w)`, then cast back.
///
/// The `1 + w` (not burn's `w`) is why the stored weights are near zero.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_square = x.clone().square().mean_dim(D - 1);
        let x = x * (mean_square + self.eps).sqrt().recip();
        let scale = self.weight.val().cast(DType::F32) + 1.0;
        (x * scale.unsqueeze::<D>()).cast(dtype)
    }
}

impl<B: Backend> RmsNorm<B> {
    /// The gradient of [`RmsNorm::forward`]'s input, given its output's gradient `grad`; the
    /// weight is frozen. With `n = x·r`, `r = 1/rms(x)`: `dx = r·(g' − n·mean(g'·n))`, where
    /// `g' = grad·(1 + w)`, in f32 like the forward.
    pub fn backward<const D: usize>(&self, x: Tensor<B, D>, grad: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let r = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt().recip();
        let n = x * r.clone();
        let scale = self.weight.val().cast(DType::F32) + 1.0;
        let g = grad.cast(DType::F32) * scale.unsqueeze::<D>();
        let dot = (g.clone() * n.clone()).mean_dim(D - 1);
        ((g - n * dot) * r).cast(dtype)
    }
}
