//! Gemma 4's mixture of experts: a router picks each token's top-k experts (gated MLPs stored as
//! 3-D tensors) and weighs their outputs; it runs beside the layer's dense MLP. Experts are
//! frozen, may carry PEFT's adapters on their two weights ([`crate::expert_lora`]), and run on
//! the tokens routed to them only.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, backend::Backend};

use crate::config::Activation;
use crate::expert_lora::{ExpertLoraGrads, ExpertLoraSaved, ExpertLoras, stack_expert_grads};
use crate::linear::Linear;
use crate::lora::{Lora, LoraGrads};
use crate::matmul::{matmul, matmul_transposed};
use crate::mlp::{activate, activation_derivative};
use crate::norm::{rms_normalize, rms_normalize_backward};

/// Picks each token's experts: `softmax(proj(norm(x)·scale/√hidden))`, its top-k renormalised
/// and scaled per expert.
#[derive(Module, Debug)]
pub struct Router<B: Backend> {
    /// `[num_experts, hidden]`.
    pub proj: Linear<B>,
    /// `[hidden]`, multiplying the normalised input (the norm itself has no weight).
    pub scale: Param<Tensor<B, 1>>,
    /// `[num_experts]`, multiplying each chosen expert's weight.
    pub per_expert_scale: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub top_k: usize,
    #[module(skip)]
    pub eps: f64,
}

/// The experts' weights: `gate_up_proj` `[experts, 2·intermediate, hidden]` (gate rows first)
/// and `down_proj` `[experts, hidden, intermediate]`.
#[derive(Module, Debug)]
pub struct Experts<B: Backend> {
    pub gate_up_proj: Param<Tensor<B, 3>>,
    pub down_proj: Param<Tensor<B, 3>>,
    /// LoRA on either weight (PEFT's `target_parameters`).
    pub lora: ExpertLoras<B>,
    #[module(skip)]
    pub activation: Activation,
}

/// Which experts each token goes to and with what weight.
#[derive(Debug, Clone)]
pub struct Routing<B: Backend> {
    /// `[tokens·top_k]` expert indices, on the host: experts run on their tokens only.
    pub experts: Vec<usize>,
    /// `[tokens, top_k]` weights, f32.
    pub weights: Tensor<B, 2>,
    pub top_k: usize,
}

/// What [`Router::backward`] needs from [`Router::forward_saving`].
#[derive(Debug, Clone)]
pub struct RouterSaved<B: Backend> {
    x: Tensor<B, 2>,
    /// f32: all experts' probabilities `[tokens, experts]`, the chosen ones `[tokens, top_k]`,
    /// their sum `[tokens, 1]` and the chosen experts' scales `[tokens, top_k]`.
    probs: Tensor<B, 2>,
    chosen: Tensor<B, 2>,
    sum: Tensor<B, 2>,
    expert_scales: Tensor<B, 2>,
    index: Tensor<B, 2, Int>,
}

impl<B: Backend> Router<B> {
    /// The routing of rows `x` `[tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Routing<B> {
        self.forward_saving(x).0
    }

    /// [`Router::forward`], keeping what the backward needs.
    pub fn forward_saving(&self, x: Tensor<B, 2>) -> (Routing<B>, RouterSaved<B>) {
        let [tokens, hidden] = x.dims();
        let root = (hidden as f64).powf(-0.5);
        let scaled = rms_normalize(x.clone(), self.eps) * self.scale.val().unsqueeze::<2>() * root;
        let probs = softmax(self.proj.forward(scaled).cast(DType::F32), 1);
        let [_, num_experts] = probs.dims();
        let experts = top_k_rows(&probs, num_experts, self.top_k);
        let device = x.device();
        let ids: Vec<i64> = experts.iter().map(|&e| e as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(ids.as_slice(), &device).reshape([tokens, self.top_k]);
        let chosen = probs.clone().gather(1, index.clone());
        let sum = chosen.clone().sum_dim(1);
        let expert_scales = self
            .per_expert_scale
            .val()
            .cast(DType::F32)
            .select(0, index.clone().reshape([tokens * self.top_k]))
            .reshape([tokens, self.top_k]);
        let weights = chosen.clone() / sum.clone() * expert_scales.clone();
        let routing = Routing {
            experts,
            weights,
            top_k: self.top_k,
        };
        let saved = RouterSaved {
            x,
            probs,
            chosen,
            sum,
            expert_scales,
            index,
        };
        (routing, saved)
    }

    /// The gradient of the router's input given the routing weights' gradient `[tokens, top_k]`
    /// (f32); the chosen experts are constants, as they are to autograd.
    pub fn backward(&self, saved: RouterSaved<B>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
        let RouterSaved {
            x,
            probs,
            chosen,
            sum,
            expert_scales,
            index,
        } = saved;
        // w = c / Σc · s: dc_j = g'_j / Σc − Σ_k g'_k·c_k / (Σc)², g' = g·s.
        let g = grad * expert_scales;
        let d_chosen = g.clone() / sum.clone() - (g * chosen).sum_dim(1) / sum.square();
        let d_probs = probs.zeros_like().scatter(1, index, d_chosen, IndexingUpdateOp::Add);
        let d_scores = probs.clone() * (d_probs.clone() - (d_probs * probs).sum_dim(1));
        let dtype = x.dtype();
        let d_scaled = matmul(d_scores.cast(dtype), self.proj.weight.val());
        let hidden = x.dims()[1];
        let d_normed = d_scaled * self.scale.val().unsqueeze::<2>() * (hidden as f64).powf(-0.5);
        rms_normalize_backward(x, d_normed, self.eps)
    }
}

/// Each row's `k` largest columns of `probs` `[rows, columns]`, largest first, read to the host.
fn top_k_rows<B: Backend>(probs: &Tensor<B, 2>, columns: usize, k: usize) -> Vec<usize> {
    let values = probs
        .clone()
        .into_data()
        .into_vec::<f32>()
        .expect("router probabilities are f32");
    values
        .chunks(columns)
        .flat_map(|row| {
            let mut order: Vec<usize> = (0..columns).collect();
            // Stable, so equal probabilities keep the lower index first.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(k);
            order
        })
        .collect()
}

/// One expert's share of a forward pass, for the backward.
#[derive(Debug, Clone)]
struct ExpertSaved<B: Backend> {
    expert: usize,
    /// The tokens routed to the expert, and their positions in the flattened routing.
    tokens: Tensor<B, 1, Int>,
    slots: Tensor<B, 1, Int>,
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
    act: Tensor<B, 2>,
    /// The expert's output before its routing weight.
    out: Tensor<B, 2>,
    gate_up_lora: Option<ExpertLoraSaved<B>>,
    down_lora: Option<ExpertLoraSaved<B>>,
}

/// What [`Experts::backward`] needs from [`Experts::forward_saving`].
#[derive(Debug, Clone)]
pub struct ExpertsSaved<B: Backend> {
    experts: Vec<ExpertSaved<B>>,
    weights: Tensor<B, 2>,
}

impl<B: Backend> Experts<B> {
    /// `Σ_k weight_k · expert_k(x)` for rows `x` `[tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>, routing: &Routing<B>) -> Tensor<B, 2> {
        self.forward_saving(x, routing).0
    }

    /// [`Experts::forward`], keeping what the backward needs. Experts run in index order, each
    /// on its tokens, their weighted outputs added in the model dtype, as transformers does.
    pub fn forward_saving(&self, x: Tensor<B, 2>, routing: &Routing<B>) -> (Tensor<B, 2>, ExpertsSaved<B>) {
        let [tokens, hidden] = x.dims();
        let device = x.device();
        let dtype = x.dtype();
        let flat_weights = routing.weights.clone().reshape([tokens * routing.top_k]);
        let mut out = x.zeros_like();
        let mut saved = Vec::new();
        for expert in 0..self.num_experts() {
            let slots: Vec<i64> = (0..tokens * routing.top_k)
                .filter(|&slot| routing.experts[slot] == expert)
                .map(|slot| slot as i64)
                .collect();
            if slots.is_empty() {
                continue;
            }
            let token_ids: Vec<i64> = slots.iter().map(|&slot| slot / routing.top_k as i64).collect();
            let tokens_t = Tensor::<B, 1, Int>::from_data(token_ids.as_slice(), &device);
            let slots_t = Tensor::<B, 1, Int>::from_data(slots.as_slice(), &device);
            let (gate_up, down) = self.weights(expert);
            let intermediate = gate_up.dims()[0] / 2;
            let rows = x.clone().select(0, tokens_t.clone());
            let (gu, gate_up_lora) = self.add_adapter(
                &self.lora.gate_up_proj,
                expert,
                matmul_transposed(rows.clone(), gate_up),
                rows,
            );
            let gate = gu.clone().narrow(1, 0, intermediate);
            let up = gu.narrow(1, intermediate, intermediate);
            let act = activate(self.activation, gate.clone());
            let product = act.clone() * up.clone();
            let (expert_out, down_lora) = self.add_adapter(
                &self.lora.down_proj,
                expert,
                matmul_transposed(product.clone(), down),
                product,
            );
            let weight = flat_weights.clone().select(0, slots_t.clone()).unsqueeze_dim::<2>(1);
            let weighted = (expert_out.clone().cast(DType::F32) * weight).cast(dtype);
            out = out.select_assign(0, tokens_t.clone(), weighted, IndexingUpdateOp::Add);
            saved.push(ExpertSaved {
                expert,
                tokens: tokens_t,
                slots: slots_t,
                gate,
                up,
                act,
                out: expert_out,
                gate_up_lora,
                down_lora,
            });
        }
        debug_assert_eq!(out.dims(), [tokens, hidden]);
        let saved = ExpertsSaved {
            experts: saved,
            weights: routing.weights.clone(),
        };
        (out, saved)
    }

    /// The gradients of the input rows, of the routing weights (f32 `[tokens, top_k]`) and of
    /// the adapters, given the output's.
    pub fn backward(
        &self,
        saved: ExpertsSaved<B>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, ExpertLoraGrads<B>) {
        let [tokens, top_k] = saved.weights.dims();
        let dtype = grad.dtype();
        let flat_weights = saved.weights.clone().reshape([tokens * top_k]);
        let mut dx = grad.zeros_like();
        let mut d_weights = flat_weights.zeros_like();
        let num_experts = self.num_experts();
        let mut gate_up_grads: Vec<Option<LoraGrads<B>>> = vec![None; num_experts];
        let mut down_grads: Vec<Option<LoraGrads<B>>> = vec![None; num_experts];
        for e in saved.experts {
            let d_out = grad.clone().select(0, e.tokens.clone()).cast(DType::F32);
            let d_weight = (d_out.clone() * e.out.cast(DType::F32)).sum_dim(1).squeeze_dim::<1>(1);
            d_weights = d_weights.select_assign(0, e.slots.clone(), d_weight, IndexingUpdateOp::Add);
            let weight = flat_weights.clone().select(0, e.slots).unsqueeze_dim::<2>(1);
            let d_expert_out = (d_out * weight).cast(dtype);
            let (gate_up, down) = self.weights(e.expert);
            let mut d_product = matmul(d_expert_out.clone(), down);
            if let (Some(lora), Some(saved)) = (&self.lora.down_proj, e.down_lora) {
                let (d_lora, grads) = lora.expert_backward(e.expert, num_experts, saved, d_expert_out);
                d_product = d_product + d_lora.cast(dtype);
                down_grads[e.expert] = Some(grads);
            }
            let d_act = d_product.clone() * e.up;
            let d_up = d_product * e.act;
            let d_gate = (activation_derivative(self.activation, e.gate) * d_act.cast(DType::F32)).cast(dtype);
            let d_gu = Tensor::cat(vec![d_gate, d_up], 1);
            let mut d_x = matmul(d_gu.clone(), gate_up);
            if let (Some(lora), Some(saved)) = (&self.lora.gate_up_proj, e.gate_up_lora) {
                let (d_lora, grads) = lora.expert_backward(e.expert, num_experts, saved, d_gu);
                d_x = d_x + d_lora.cast(dtype);
                gate_up_grads[e.expert] = Some(grads);
            }
            dx = dx.select_assign(0, e.tokens, d_x, IndexingUpdateOp::Add);
        }
        let lora_grads = ExpertLoraGrads {
            gate_up_proj: self
                .lora
                .gate_up_proj
                .as_ref()
                .map(|lora| stack_expert_grads(gate_up_grads, lora)),
            down_proj: self
                .lora
                .down_proj
                .as_ref()
                .map(|lora| stack_expert_grads(down_grads, lora)),
        };
        (dx, d_weights.reshape([tokens, top_k]), lora_grads)
    }

    /// How many experts the weights hold.
    pub fn num_experts(&self) -> usize {
        self.gate_up_proj.val().dims()[0]
    }

    /// `base` (expert `expert`'s projection of `x`) plus the adapter's delta, if there is one.
    fn add_adapter(
        &self,
        lora: &Option<Lora<B>>,
        expert: usize,
        base: Tensor<B, 2>,
        x: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Option<ExpertLoraSaved<B>>) {
        match lora {
            Some(lora) => {
                let (out, saved) = lora.add_to_expert_saving(expert, self.num_experts(), base, x);
                (out, Some(saved))
            }
            None => (base, None),
        }
    }

    /// Expert `expert`'s `[2·intermediate, hidden]` and `[hidden, intermediate]` weights.
    fn weights(&self, expert: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let take = |w: Tensor<B, 3>| {
            let [_, rows, columns] = w.dims();
            w.narrow(0, expert, 1).reshape([rows, columns])
        };
        (take(self.gate_up_proj.val()), take(self.down_proj.val()))
    }
}
