//! Gemma 3n's decoder layer: attention (with Laurel beside it) and the MLP run on the active
//! AltUp version, between AltUp's prediction and correction; the per-layer input block then
//! updates the other versions.
//!
//! ```text
//! pred      = predict(x)                       x, pred: [tokens, n, hidden]
//! a         = pred[active]
//! normed    = input_layernorm(a)
//! mixed     = (a + post_attention_layernorm(attn(normed)) + laurel(normed)) / √2
//! activated = mixed + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(mixed)))
//! y         = correct(pred, activated);  y[1..] += per_layer_block(scale · y[active])
//! ```

use burn::tensor::{Tensor, backend::Backend};

use crate::altup::{CorrectSaved, PredictSaved};
use crate::attention::{AttentionSaved, KvSlot};
use crate::kv_share::SharedKv;
use crate::laurel::LaurelSaved;
use crate::layer::{DecoderLayer, LayerGrads, LayerInput, LayerKeep, LayerSaved, Saved};
use crate::mlp::MlpSaved;
use crate::per_layer::PerLayerSaved;
use crate::rope::RopeTables;

/// What [`DecoderLayer::backward`] needs from a Gemma 3n layer's forward.
#[derive(Debug, Clone)]
pub(crate) struct AltUpLayerSaved<B: Backend> {
    predict: PredictSaved<B>,
    /// The active prediction, its norm's input.
    active: Tensor<B, 2>,
    attention: AttentionSaved<B>,
    /// Attention's output before its norm.
    attn: Tensor<B, 2>,
    laurel: LaurelSaved<B>,
    mixed: Tensor<B, 2>,
    mlp: MlpSaved<B>,
    /// The MLP's output before its norm.
    ff: Tensor<B, 2>,
    correct: CorrectSaved<B>,
    per_layer: PerLayerSaved<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn altup_parts(
        &self,
    ) -> (
        &crate::altup::AltUp<B>,
        &crate::laurel::Laurel<B>,
        &crate::norm::RmsNorm<B>,
        &crate::norm::RmsNorm<B>,
    ) {
        let missing = "a Gemma 3n layer has AltUp, Laurel and sandwich norms (the loader builds it so)";
        (
            self.altup.as_ref().expect(missing),
            self.laurel.as_ref().expect(missing),
            self.pre_feedforward_layernorm.as_ref().expect(missing),
            self.post_feedforward_layernorm.as_ref().expect(missing),
        )
    }

    pub(crate) fn forward_altup(&self, x: Tensor<B, 3>, input: LayerInput<B>, kv: KvSlot<'_, B>) -> Tensor<B, 3> {
        let (altup, laurel, pre_ff, post_ff) = self.altup_parts();
        let block = self
            .per_layer_block()
            .expect("a Gemma 3n layer has a per-layer input block");
        let per_layer = input.per_layer_input.expect("Gemma 3n layers take a per-layer input");
        let [batch, seq, width] = x.dims();
        let hidden = self.input_layernorm.weight.val().dims()[0];
        let (tokens, n) = (batch * seq, width / hidden);
        let (predictions, _) = altup.predict(x.reshape([tokens, n, hidden]), false);
        let active = predictions
            .clone()
            .narrow(1, altup.active_idx, 1)
            .reshape([tokens, hidden]);
        let normed = self.input_layernorm.forward(active.clone());
        let laurel_out = laurel.forward(normed.clone());
        let attn = self
            .self_attn
            .forward(normed.reshape([batch, seq, hidden]), &input.rope, input.mask, kv)
            .reshape([tokens, hidden]);
        let attn = self.post_attention_layernorm.forward(attn);
        let mixed = (active + attn + laurel_out) / std::f64::consts::SQRT_2;
        let ff = self
            .mlp
            .forward(pre_ff.forward(mixed.clone()).reshape([1, tokens, hidden]))
            .reshape([tokens, hidden]);
        let activated = mixed + post_ff.forward(ff);
        let (corrected, _) = altup.correct(predictions, activated, false);
        let per_layer_width = per_layer.dims()[2];
        let update = block.forward(
            self.scaled_active(&corrected),
            per_layer.reshape([tokens, per_layer_width]),
        );
        add_to_non_first(corrected, update).reshape([batch, seq, width])
    }

    /// The corrected active version, scaled by `correct_output_scale` when the config says so.
    fn scaled_active(&self, corrected: &Tensor<B, 3>) -> Tensor<B, 2> {
        let (altup, ..) = self.altup_parts();
        let [tokens, _, hidden] = corrected.dims();
        let active = corrected
            .clone()
            .narrow(1, altup.active_idx, 1)
            .reshape([tokens, hidden]);
        match altup.correct_scale {
            true => altup.scale_output(active),
            false => active,
        }
    }

    pub(crate) fn forward_saving_altup(
        &self,
        x: Tensor<B, 3>,
        input: LayerInput<B>,
        keep: LayerKeep<B>,
        index: usize,
        shared: &mut SharedKv<B>,
    ) -> (Tensor<B, 3>, LayerSaved<B>) {
        let (altup, laurel, pre_ff, post_ff) = self.altup_parts();
        let block = self
            .per_layer_block()
            .expect("a Gemma 3n layer has a per-layer input block");
        let per_layer = input.per_layer_input.expect("Gemma 3n layers take a per-layer input");
        let [q, k, v, o, gate, up, down] = keep;
        let [batch, seq, width] = x.dims();
        let hidden = self.input_layernorm.weight.val().dims()[0];
        let (tokens, n) = (batch * seq, width / hidden);
        let (predictions, predict) = altup.predict(x.reshape([tokens, n, hidden]), true);
        let active = predictions
            .clone()
            .narrow(1, altup.active_idx, 1)
            .reshape([tokens, hidden]);
        let normed = self.input_layernorm.forward(active.clone());
        let (laurel_out, laurel_saved) = laurel.forward_saving(normed.clone());
        let (attn, attention) = self.self_attn.forward_saving(
            normed.reshape([batch, seq, hidden]),
            &input.rope,
            input.mask,
            [q, k, v, o],
            index,
            shared,
        );
        let mixed = (active.clone() + self.post_attention_layernorm.forward(attn.clone()) + laurel_out)
            / std::f64::consts::SQRT_2;
        let (ff, mlp) = self.mlp.forward_saving(pre_ff.forward(mixed.clone()), [gate, up, down]);
        let activated = mixed.clone() + post_ff.forward(ff.clone());
        let (corrected, correct) = altup.correct(predictions, activated, true);
        let per_layer_width = per_layer.dims()[2];
        let (update, per_layer_saved) = block.forward_saving(
            self.scaled_active(&corrected),
            per_layer.reshape([tokens, per_layer_width]),
        );
        let y = add_to_non_first(corrected, update).reshape([batch, seq, width]);
        let saved = AltUpLayerSaved {
            predict,
            active,
            attention,
            attn,
            laurel: laurel_saved,
            mixed,
            mlp,
            ff,
            correct,
            per_layer: per_layer_saved,
        };
        (y, LayerSaved(Saved::AltUp(Box::new(saved))))
    }

    pub(crate) fn backward_altup(
        &self,
        saved: AltUpLayerSaved<B>,
        rope: &RopeTables<B>,
        grad: Tensor<B, 3>,
        index: usize,
        shared: &mut SharedKv<B>,
    ) -> (Tensor<B, 3>, LayerGrads<B>) {
        let (altup, laurel, pre_ff, post_ff) = self.altup_parts();
        let block = self
            .per_layer_block()
            .expect("a Gemma 3n layer has a per-layer input block");
        let [batch, seq, width] = grad.dims();
        let hidden = self.input_layernorm.weight.val().dims()[0];
        let (tokens, n) = (batch * seq, width / hidden);
        let a = altup.active_idx;
        let d_corrected = grad.reshape([tokens, n, hidden]);
        // y[k] = corrected[k] + update for k ≥ 1; update = block(scale · corrected[active]).
        let d_update = d_corrected
            .clone()
            .narrow(1, 1, n - 1)
            .sum_dim(1)
            .reshape([tokens, hidden]);
        let mut d_scaled = block.backward(saved.per_layer, d_update);
        if altup.correct_scale {
            d_scaled = altup.scale_output(d_scaled);
        }
        let current = d_corrected.clone().narrow(1, a, 1);
        let d_corrected = d_corrected.slice_assign(
            [0..tokens, a..a + 1, 0..hidden],
            current + d_scaled.reshape([tokens, 1, hidden]),
        );
        let (d_predictions, d_activated) = altup.correct_backward(saved.correct, d_corrected, true);
        let (d_ff_in, mlp_grads) = self
            .mlp
            .backward(saved.mlp, post_ff.backward(saved.ff, d_activated.clone()));
        let d_mixed = (d_activated + pre_ff.backward(saved.mixed, d_ff_in)) / std::f64::consts::SQRT_2;
        let d_attn = self.post_attention_layernorm.backward(saved.attn, d_mixed.clone());
        let (d_normed_attn, [q, k, v, o]) = self.self_attn.backward(saved.attention, rope, d_attn, index, shared);
        let d_normed = d_normed_attn + laurel.backward(saved.laurel, d_mixed.clone());
        let d_active = d_mixed + self.input_layernorm.backward(saved.active, d_normed);
        let current = d_predictions.clone().narrow(1, a, 1);
        let d_predictions = d_predictions.slice_assign(
            [0..tokens, a..a + 1, 0..hidden],
            current + d_active.reshape([tokens, 1, hidden]),
        );
        let dx = altup.predict_backward(saved.predict, d_predictions, true);
        let [gate, up, down] = mlp_grads;
        // Gemma 3n has no experts.
        (
            dx.reshape([batch, seq, width]),
            [q, k, v, o, gate, up, down, None, None],
        )
    }
}

/// `x[k] + update` for every version but the first (transformers adds to `[1:]`, whichever is
/// active).
fn add_to_non_first<B: Backend>(x: Tensor<B, 3>, update: Tensor<B, 2>) -> Tensor<B, 3> {
    let [tokens, n, hidden] = x.dims();
    let rest = x.clone().narrow(1, 1, n - 1) + update.reshape([tokens, 1, hidden]);
    x.slice_assign([0..tokens, 1..n, 0..hidden], rest)
}
