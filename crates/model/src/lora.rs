use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor, backend::Backend};

use crate::matmul::matmul;

/// A LoRA adapter on one projection: `delta(x) = scale · B(A(dropout(x)))`.
///
/// Computed as two thin matmuls, never as a dense `W + BA`. Its parameters are f32 whatever
/// the base runs in; the input is cast up and the sum cast back, as PEFT does.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// PEFT's `lora_A.weight`, `[r, in_features]`.
    pub a: Param<Tensor<B, 2>>,
    /// PEFT's `lora_B.weight`, `[out_features, r]`.
    pub b: Param<Tensor<B, 2>>,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    #[module(skip)]
    pub scale: f64,
    /// Dropout probability on the adapter's input; active only under autodiff.
    #[module(skip)]
    pub dropout: f64,
}

impl<B: Backend> Lora<B> {
    /// `base + delta(x)`, where `base` is the frozen projection of `x`.
    pub fn add_to<const D: usize>(&self, base: Tensor<B, D>, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = base.dtype();
        let mut x = x.cast(DType::F32);
        if self.dropout > 0.0 && B::ad_enabled(&x.device()) {
            let keep = Tensor::<B, D>::random(x.shape(), Distribution::Bernoulli(1.0 - self.dropout), &x.device());
            x = x * keep / (1.0 - self.dropout);
        }
        let a = self.a.val().transpose().unsqueeze::<D>();
        let b = self.b.val().transpose().unsqueeze::<D>();
        let delta = matmul(matmul(x, a), b) * self.scale;
        (base.cast(DType::F32) + delta).cast(dtype)
    }

    /// `scale · B A`, `[out, in]`, in f32: what merging adds to the base weight.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        matmul(self.b.val(), self.a.val()) * self.scale
    }

    pub fn rank(&self) -> usize {
        self.a.val().dims()[0]
    }
}

/// What [`Lora::backward`] needs from a training forward: the adapter's input (dropped out,
/// in f32) and the rank-sized product `x·Aᵀ`.
#[derive(Debug, Clone)]
pub struct LoraSaved<B: Backend> {
    x: Tensor<B, 2>,
    z: Tensor<B, 2>,
    keep: Option<Tensor<B, 2>>,
}

/// The gradients of one adapter's matrices, `[r, in]` and `[out, r]`, in f32.
#[derive(Debug, Clone)]
pub struct LoraGrads<B: Backend> {
    pub a: Tensor<B, 2>,
    pub b: Tensor<B, 2>,
}

impl<B: Backend> Lora<B> {
    /// [`Lora::add_to`] on rows `x` `[n, in]` for training: dropout applies whenever the adapter
    /// has some, with `keep` the mask to use (`[n, in]` of 0/1, drawn by the caller so that a
    /// recompute can replay it).
    pub fn add_to_saving(
        &self,
        base: Tensor<B, 2>,
        x: Tensor<B, 2>,
        keep: Option<Tensor<B, 2>>,
    ) -> (Tensor<B, 2>, LoraSaved<B>) {
        let mut x = x.cast(DType::F32);
        if let Some(keep) = &keep {
            x = x * keep.clone() / (1.0 - self.dropout);
        }
        let (out, z) = add_low_rank(base, x.clone(), self.a.val(), self.b.val(), self.scale);
        (out, LoraSaved { x, z, keep })
    }

    /// The adapter's gradients and its part of the input gradient (f32, `[n, in]`), given the
    /// output gradient `grad` `[n, out]`.
    pub fn backward(&self, saved: LoraSaved<B>, grad: Tensor<B, 2>) -> (Tensor<B, 2>, LoraGrads<B>) {
        let (mut dx, grads) = low_rank_backward(saved.x, saved.z, self.a.val(), self.b.val(), self.scale, grad);
        if let Some(keep) = saved.keep {
            dx = dx * keep / (1.0 - self.dropout);
        }
        (dx, grads)
    }
}

/// `base + scale·(x·aᵀ)·bᵀ` for f32 rows `x` `[n, in]`, `a` `[r, in]`, `b` `[out, r]`: the sum
/// in f32, cast back to `base`'s dtype; with the rank-sized product `z = x·aᵀ` the backward
/// reuses.
pub(crate) fn add_low_rank<B: Backend>(
    base: Tensor<B, 2>,
    x: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let dtype = base.dtype();
    let z = matmul(x, a.transpose());
    let delta = matmul(z.clone(), b.clone().transpose()) * scale;
    ((base.cast(DType::F32) + delta).cast(dtype), z)
}

/// The gradients of [`add_low_rank`]'s input (f32 `[n, in]`) and of `a` and `b`, given the
/// output's gradient `grad` `[n, out]`.
pub(crate) fn low_rank_backward<B: Backend>(
    x: Tensor<B, 2>,
    z: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
    grad: Tensor<B, 2>,
) -> (Tensor<B, 2>, LoraGrads<B>) {
    let grad = grad.cast(DType::F32) * scale;
    let db = matmul(grad.clone().transpose(), z);
    let dz = matmul(grad, b);
    let da = matmul(dz.clone().transpose(), x);
    (matmul(dz, a), LoraGrads { a: da, b: db })
}
