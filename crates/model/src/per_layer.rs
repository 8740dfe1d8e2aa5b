//! Per-layer embeddings (Gemma 3n, Gemma 4's E models): besides the main embedding, each token
//! has a small embedding for every layer, packed in one table. Mixed with a projection of the
//! main embedding, layer `i`'s slice gates a low-rank update of that layer's output.

use burn::tensor::{Int, Tensor, backend::Backend};

use crate::config::{Activation, Family};
use crate::linear::{Linear, LinearSaved};
use crate::mlp::{activate, activation_derivative};
use crate::model::GemmaModel;
use crate::norm::RmsNorm;

impl<B: Backend> GemmaModel<B> {
    /// Every layer's input `[batch, seq, layers, width]` for `input_ids` `[batch, seq]` and their
    /// scaled main embeddings `embeds` `[batch, seq, hidden]`:
    /// `(norm(projection(embeds)/√hidden) + embed_tokens_per_layer(ids)) / √2`. `None` for a
    /// model without per-layer embeddings.
    pub fn per_layer_inputs(
        &self,
        family: Family,
        input_ids: Tensor<B, 2, Int>,
        embeds: Tensor<B, 3>,
    ) -> Option<Tensor<B, 4>> {
        let (Some(table), Some(projection), Some(norm)) = (
            &self.embed_tokens_per_layer,
            &self.per_layer_model_projection,
            &self.per_layer_projection_norm,
        ) else {
            return None;
        };
        let [batch, seq, hidden] = embeds.dims();
        let layers = self.layers.len();
        let width = norm.weight.val().dims()[0];
        // Gemma 3n looks up ids beyond the table (audio and image tokens) as id 0.
        let ids = match family {
            Family::Gemma3n => {
                let rows = table.weight.val().dims()[0] as i64;
                let outside = input_ids.clone().greater_equal_elem(rows);
                input_ids.mask_fill(outside, 0)
            }
            _ => input_ids,
        };
        let tokens = table.forward(ids).reshape([batch, seq, layers, width]);
        let projected = projection.forward(embeds) * (hidden as f64).powf(-0.5);
        let projected = norm.forward(projected.reshape([batch, seq, layers, width]));
        Some((projected + tokens) * std::f64::consts::FRAC_1_SQRT_2)
    }
}

/// A layer's per-layer-input block: `norm(projection(act(gate(x)) · input))`, the update added
/// to the layer's output (Gemma 4) or to its non-first AltUp streams (Gemma 3n).
pub struct PerLayerBlock<'a, B: Backend> {
    pub gate: &'a Linear<B>,
    pub projection: &'a Linear<B>,
    pub norm: &'a RmsNorm<B>,
    pub activation: Activation,
}

/// What [`PerLayerBlock::backward`] needs from [`PerLayerBlock::forward_saving`].
#[derive(Debug, Clone)]
pub struct PerLayerSaved<B: Backend> {
    gate: LinearSaved<B>,
    projection: LinearSaved<B>,
    gated: Tensor<B, 2>,
    input: Tensor<B, 2>,
    projected: Tensor<B, 2>,
}

impl<B: Backend> PerLayerBlock<'_, B> {
    /// `x` `[n, hidden]` and the layer's input `[n, width]` -> `[n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>, input: Tensor<B, 2>) -> Tensor<B, 2> {
        let gated = activate(self.activation, self.gate.forward(x)) * input;
        self.norm.forward(self.projection.forward(gated))
    }

    pub fn forward_saving(&self, x: Tensor<B, 2>, input: Tensor<B, 2>) -> (Tensor<B, 2>, PerLayerSaved<B>) {
        let (gated, gate) = self.gate.forward_saving(x, None);
        let (projected, projection) = self
            .projection
            .forward_saving(activate(self.activation, gated.clone()) * input.clone(), None);
        let out = self.norm.forward(projected.clone());
        let saved = PerLayerSaved {
            gate,
            projection,
            gated,
            input,
            projected,
        };
        (out, saved)
    }

    /// The gradient of `x` given the output's; the layer's input is a constant of the
    /// adapters (it depends on the frozen embeddings only).
    pub fn backward(&self, saved: PerLayerSaved<B>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
        let d_projected = self.norm.backward(saved.projected, grad);
        let (d_product, _) = self.projection.backward(saved.projection, d_projected);
        let dtype = d_product.dtype();
        let d_act = (d_product * saved.input).cast(burn::tensor::DType::F32);
        let d_gated = (activation_derivative(self.activation, saved.gated) * d_act).cast(dtype);
        self.gate.backward(saved.gate, d_gated).0
    }
}
