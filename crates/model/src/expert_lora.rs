//! LoRA on Gemma 4's 3-D expert weights, as PEFT applies it: `LoraConfig(target_parameters=
//! ["experts.gate_up_proj", "experts.down_proj"])`, PEFT's `ParamWrapper` (peft 0.21,
//! `peft/tuners/lora/layer.py`).
//!
//! PEFT's format for a weight `W` `[experts, out, in]` (transformers' Gemma 4 experts are not
//! `is_transposed`: each expert's slice is `[out, in]`, used as `x·W[e]ᵀ`, so PEFT swaps the
//! `in, out` it first reads off dims 1 and 2): one adapter for all experts, of rank `r` each,
//! - `lora_A.weight` `[r·experts, in]`: expert `e`'s `A_e` `[r, in]` is rows `e·r .. (e+1)·r`
//!   (PEFT reshapes A to `[experts, r, in]`);
//! - `lora_B.weight` `[out, r·experts]`: expert `e`'s `B_e` `[out, r]` is columns
//!   `e, e + experts, e + 2·experts, …` (PEFT reshapes B to `[out, r, experts]`, expert last);
//! - scaling `alpha / r` (`alpha / √r` with rsLoRA), `r` the per-expert rank;
//! - delta `scale·B_e·A_e` `[out, in]` on `W[e]`, no dropout (PEFT refuses dropout there).
//!
//! PEFT adds the delta to the weight (a parametrization: `baddbmm` in the weight's dtype)
//! before the experts run; Ember adds `scale·(x·A_eᵀ)·B_eᵀ` to each expert's `x·W[e]ᵀ` in f32,
//! as [`Lora`] does on a projection: equal in exact arithmetic, and the weight is never copied.
//! The keys PEFT gives these tensors are `ember-lora`'s business (`peft.rs`).

use burn::module::Module;
use burn::tensor::{DType, Tensor, backend::Backend};

use crate::lora::{Lora, LoraGrads, add_low_rank, low_rank_backward};
use crate::matmul::matmul;

/// The adapters on an [`crate::Experts`]' two weights, by the weights' names.
#[derive(Module, Debug)]
pub struct ExpertLoras<B: Backend> {
    pub gate_up_proj: Option<Lora<B>>,
    pub down_proj: Option<Lora<B>>,
}

/// The two adapters' gradients, in PEFT's layout (`[r·experts, in]`, `[out, r·experts]`).
#[derive(Debug, Clone)]
pub struct ExpertLoraGrads<B: Backend> {
    pub gate_up_proj: Option<LoraGrads<B>>,
    pub down_proj: Option<LoraGrads<B>>,
}

/// What one expert's adapter backward needs: its input rows (f32) and `x·A_eᵀ`.
#[derive(Debug, Clone)]
pub(crate) struct ExpertLoraSaved<B: Backend> {
    x: Tensor<B, 2>,
    z: Tensor<B, 2>,
}

impl<B: Backend> Lora<B> {
    /// Expert `expert`'s `A_e` `[r, in]` and `B_e` `[out, r]`, of an adapter on a weight of
    /// `experts` experts.
    fn expert_factors(&self, expert: usize, experts: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [rows, _] = self.a.val().dims();
        let [out, _] = self.b.val().dims();
        let r = rows / experts;
        let a = self.a.val().narrow(0, expert * r, r);
        let b = self
            .b
            .val()
            .reshape([out, r, experts])
            .narrow(2, expert, 1)
            .reshape([out, r]);
        (a, b)
    }

    /// `base + scale·B_e·A_e·x` for expert `expert`'s rows `x` `[n, in]` (`base` their `x·W[e]ᵀ`).
    pub(crate) fn add_to_expert_saving(
        &self,
        expert: usize,
        experts: usize,
        base: Tensor<B, 2>,
        x: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, ExpertLoraSaved<B>) {
        let (a, b) = self.expert_factors(expert, experts);
        let x = x.cast(DType::F32);
        let (out, z) = add_low_rank(base, x.clone(), a, b, self.scale);
        (out, ExpertLoraSaved { x, z })
    }

    /// The adapter's part of expert `expert`'s input gradient (f32 `[n, in]`) and the gradients
    /// of its `A_e` and `B_e`, given the output's `[n, out]`.
    pub(crate) fn expert_backward(
        &self,
        expert: usize,
        experts: usize,
        saved: ExpertLoraSaved<B>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, LoraGrads<B>) {
        let (a, b) = self.expert_factors(expert, experts);
        low_rank_backward(saved.x, saved.z, a, b, self.scale, grad)
    }

    /// `scale·B_e·A_e` for every expert, `[experts, out, in]` in f32: what merging adds to the
    /// 3-D weight.
    pub fn expert_delta_weights(&self, experts: usize) -> Tensor<B, 3> {
        let [rows, input] = self.a.val().dims();
        let [out, _] = self.b.val().dims();
        let r = rows / experts;
        let a = self.a.val().reshape([experts, r, input]);
        let b = self.b.val().reshape([out, r, experts]).permute([2, 0, 1]);
        matmul(b, a) * self.scale
    }
}

/// Per-expert gradients (`None` for an expert no token reached) laid out as PEFT's `lora_A`
/// `[r·experts, in]` and `lora_B` `[out, r·experts]`; `like` is the adapter, for the shapes.
pub(crate) fn stack_expert_grads<B: Backend>(per_expert: Vec<Option<LoraGrads<B>>>, like: &Lora<B>) -> LoraGrads<B> {
    let experts = per_expert.len();
    let [rows, input] = like.a.val().dims();
    let [out, _] = like.b.val().dims();
    let r = rows / experts;
    let device = like.a.val().device();
    let (a, b): (Vec<_>, Vec<_>) = per_expert
        .into_iter()
        .map(|grads| {
            let LoraGrads { a, b } = grads.unwrap_or_else(|| LoraGrads {
                a: Tensor::zeros([r, input], (&device, DType::F32)),
                b: Tensor::zeros([out, r], (&device, DType::F32)),
            });
            (a, b.unsqueeze_dim::<3>(2))
        })
        .unzip();
    LoraGrads {
        a: Tensor::cat(a, 0),
        b: Tensor::cat(b, 2).reshape([out, rows]),
    }
}
