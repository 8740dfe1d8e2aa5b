use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, backend::Backend};

/// Gemma's RMSNorm: computed in f32 as `x / rms(x) * (offset + w)`, then cast back.
///
/// Gemma 1 to 3 scale by `1 + w` (not burn's `w`: why their stored weights are near zero);
/// Gemma 3n and 4 by `w` itself (`offset` 0).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
    /// 1 for Gemma 1 to 3, 0 for Gemma 3n and 4.
    #[module(skip)]
    pub offset: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_square = x.clone().square().mean_dim(D - 1);
        let x = x * (mean_square + self.eps).sqrt().recip();
        (x * self.scale().unsqueeze::<D>()).cast(dtype)
    }

    /// `offset + w`, in f32.
    fn scale(&self) -> Tensor<B, 1> {
        self.weight.val().cast(DType::F32) + self.offset
    }
}

impl<B: Backend> RmsNorm<B> {
    /// The gradient of [`RmsNorm::forward`]'s input, given its output's gradient `grad`; the
    /// weight is frozen. With `n = x·r`, `r = 1/rms(x)`: `dx = r·(g' − n·mean(g'·n))`, where
    /// `g' = grad·(offset + w)`, in f32 like the forward.
    pub fn backward<const D: usize>(&self, x: Tensor<B, D>, grad: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let g = grad.cast(DType::F32) * self.scale().unsqueeze::<D>();
        normalize_backward_f32(x, g, self.eps).cast(dtype)
    }
}

/// RMS normalisation without a weight (Gemma 3n's and 4's value norm and expert router):
/// `x / rms(x)` over the last dimension, in f32, cast back.
pub fn rms_normalize<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean_square = x.clone().square().mean_dim(D - 1);
    (x * (mean_square + eps).sqrt().recip()).cast(dtype)
}

/// The gradient of [`rms_normalize`]'s input given its output's.
pub fn rms_normalize_backward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    grad: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    normalize_backward_f32(x, grad.cast(DType::F32), eps).cast(dtype)
}

/// `r·(g − n·mean(g·n))` in f32, with `n = x·r`, `r = 1/rms(x)`.
fn normalize_backward_f32<B: Backend, const D: usize>(x: Tensor<B, D>, g: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let x = x.cast(DType::F32);
    let r = (x.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    let n = x * r.clone();
    let dot = (g.clone() * n.clone()).mean_dim(D - 1);
    (g - n * dot) * r
}
