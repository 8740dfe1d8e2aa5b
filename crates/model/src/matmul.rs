//! The model's matrix products, with f32 accuracy kept where the backend would lose it.
//!
//! burn 0.21's CUDA backend runs f32 matmuls on tensor cores in TF32, which keeps 10 of f32's 23
//! mantissa bits: on the tiny fixtures the logits then move by up to 3e-2 from transformers' f32
//! (PyTorch computes f32 matmuls in full f32 by default). With [`set_split_f32_matmul`] on, each
//! f32 operand is split into a bf16 head and an f32 tail, and `a·b = a_hi·b_hi + a_hi·b_lo +
//! a_lo·b`: the heads multiply exactly on tensor cores, the tails carry the rest, and the error
//! drops to about 2^-19 of the product for three matmuls' cost. The gradient is `a·b`'s (the
//! heads pass it through, the tails' paths cancel), though the backward pass's own matmuls stay
//! TF32. bf16 matmuls are untouched: they are what training runs on.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

static SPLIT_F32: AtomicBool = AtomicBool::new(false);

/// Turns the split f32 matmul on or off for the whole process (the CLI turns it on for CUDA).
pub fn set_split_f32_matmul(on: bool) {
    SPLIT_F32.store(on, Ordering::Relaxed);
}

/// `a · b` over the last two axes, as [`Tensor::matmul`].
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dtype() != DType::F32 || !SPLIT_F32.load(Ordering::Relaxed) {
        return a.matmul(b);
    }
    let (a_hi, a_lo) = split(a);
    let (b_hi, b_lo) = split(b.clone());
    a_hi.clone().matmul(b_hi) + a_hi.matmul(b_lo) + a_lo.matmul(b)
}

fn split<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    let hi = x.clone().cast(DType::BF16).cast(DType::F32);
    let lo = x - hi.clone();
    (hi, lo)
}
