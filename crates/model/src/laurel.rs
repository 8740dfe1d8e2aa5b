//! Gemma 3n's Laurel ("learned augmented residual layer"): a rank-`laurel_rank` side path of the
//! attention block, `x + norm(right(left(x)))`, on the attention's normalised input.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::linear::{Linear, LinearSaved};
use crate::norm::RmsNorm;

#[derive(Module, Debug)]
pub struct Laurel<B: Backend> {
    /// `[laurel_rank, hidden]`.
    pub linear_left: Linear<B>,
    /// `[hidden, laurel_rank]`.
    pub linear_right: Linear<B>,
    pub post_laurel_norm: RmsNorm<B>,
}

/// What [`Laurel::backward`] needs from [`Laurel::forward_saving`].
#[derive(Debug, Clone)]
pub struct LaurelSaved<B: Backend> {
    left: LinearSaved<B>,
    right: LinearSaved<B>,
    /// The norm's input.
    path: Tensor<B, 2>,
}

impl<B: Backend> Laurel<B> {
    /// `[n, hidden] -> [n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let path = self.linear_right.forward(self.linear_left.forward(x.clone()));
        x + self.post_laurel_norm.forward(path)
    }

    pub fn forward_saving(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, LaurelSaved<B>) {
        let (low, left) = self.linear_left.forward_saving(x.clone(), None);
        let (path, right) = self.linear_right.forward_saving(low, None);
        let out = x + self.post_laurel_norm.forward(path.clone());
        (out, LaurelSaved { left, right, path })
    }

    /// The input's gradient given the output's; the weights are frozen.
    pub fn backward(&self, saved: LaurelSaved<B>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
        let d_path = self.post_laurel_norm.backward(saved.path, grad.clone());
        let (d_low, _) = self.linear_right.backward(saved.right, d_path);
        let (d_x, _) = self.linear_left.backward(saved.left, d_low);
        grad + d_x
    }
}
