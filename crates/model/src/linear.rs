use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::bnb::FourBitWeight;
use crate::lora::{Lora, LoraGrads, LoraSaved};
use crate::matmul::{matmul, matmul_transposed};

/// A bias-free projection stored in the Hugging Face layout `[out_features, in_features]`,
/// with an optional LoRA adapter.
///
/// Keeping the checkpoint's layout makes loading, PEFT export and merging a straight copy;
/// the one transpose lives here, in the matmul.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: FrozenWeight<B>,
    pub lora: Option<Lora<B>>,
}

/// A projection's frozen base weight: dense in the run dtype, or 4-bit (QLoRA).
// Boxing the 4-bit variant would save a few hundred bytes per projection and cost an
// indirection in every forward: a model holds only hundreds of these.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FrozenWeight<B: Backend> {
    Dense(Param<Tensor<B, 2>>),
    FourBit(FourBitWeight<B>),
}

impl<B: Backend> FrozenWeight<B> {
    /// The weight `[out, in]` in the run dtype; a 4-bit weight is dequantized now, for this use.
    pub fn val(&self) -> Tensor<B, 2> {
        match self {
            Self::Dense(weight) => weight.val(),
            Self::FourBit(weight) => weight.dequantize(),
        }
    }

    pub fn device(&self) -> B::Device {
        match self {
            Self::Dense(weight) => weight.val().device(),
            Self::FourBit(weight) => weight.absmax.val().device(),
        }
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(weight) => weight.val().dims(),
            Self::FourBit(weight) => weight.format.shape,
        }
    }
}

impl<B: Backend> Linear<B> {
    /// `[.., in] -> [.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let base = matmul_transposed(x.clone(), self.weight.val());
        match &self.lora {
            Some(lora) => lora.add_to(base, x),
            None => base,
        }
    }

    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        self.weight.dims()
    }
}

/// What [`Linear::backward`] needs from [`Linear::forward_saving`].
#[derive(Debug, Clone)]
pub struct LinearSaved<B: Backend> {
    lora: Option<LoraSaved<B>>,
}

impl<B: Backend> Linear<B> {
    /// [`Linear::forward`] on rows `[n, in]` for training, keeping what the backward needs;
    /// `keep` is the adapter's dropout mask, if it has dropout.
    pub fn forward_saving(&self, x: Tensor<B, 2>, keep: Option<Tensor<B, 2>>) -> (Tensor<B, 2>, LinearSaved<B>) {
        let base = matmul_transposed(x.clone(), self.weight.val());
        match &self.lora {
            Some(lora) => {
                let (out, saved) = lora.add_to_saving(base, x, keep);
                (out, LinearSaved { lora: Some(saved) })
            }
            None => (base, LinearSaved { lora: None }),
        }
    }

    /// The input's gradient `[n, in]` and the adapter's gradients, given the output's `[n, out]`.
    /// The base weight is frozen: only its input gradient is computed.
    pub fn backward(&self, saved: LinearSaved<B>, grad: Tensor<B, 2>) -> (Tensor<B, 2>, Option<LoraGrads<B>>) {
        let dx = matmul(grad.clone(), self.weight.val());
        match (&self.lora, saved.lora) {
            (Some(lora), Some(saved)) => {
                let dtype = dx.dtype();
                let (dx_lora, grads) = lora.backward(saved, grad);
                (dx + dx_lora.cast(dtype), Some(grads))
            }
            _ => (dx, None),
        }
    }
}
