use burn::module::Module;
use burn::tensor::{Bool, Distribution, Tensor, backend::Backend};

use crate::attention::{Attention, AttentionSaved};
use crate::cache::KvCache;
use crate::config::LayerType;
use crate::lora::LoraGrads;
use crate::mlp::{Mlp, MlpSaved};
use crate::norm::RmsNorm;
use crate::rope::RopeTables;

/// One decoder block. Gemma 1 normalises before attention and MLP; Gemma 2 and 3 also
/// normalise their outputs ("sandwich" norms: the two `post_*`/`pre_feedforward` norms).
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    #[module(skip)]
    pub layer_type: LayerType,
}

impl<B: Backend> DecoderLayer<B> {
    /// `[batch, seq, hidden] -> [batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), rope, mask, cache);
        match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let h = x + self.post_attention_layernorm.forward(attn);
                let ff = self.mlp.forward(pre_ff.forward(h.clone()));
                h + post_ff.forward(ff)
            }
            _ => {
                let h = x + attn;
                let ff = self.mlp.forward(self.post_attention_layernorm.forward(h.clone()));
                h + ff
            }
        }
    }
}

/// The adapters' dropout masks of one decoder layer, in the order the forward uses the
/// projections: q, k, v, o, gate, up, down. `None` where a projection has no adapter or no
/// dropout.
pub type LayerKeep<B> = [Option<Tensor<B, 2>>; 7];

/// The adapters' gradients of one decoder layer, in [`LayerKeep`]'s order.
pub type LayerGrads<B> = [Option<LoraGrads<B>>; 7];

/// What [`DecoderLayer::backward`] needs from [`DecoderLayer::forward_saving`].
#[derive(Debug, Clone)]
pub struct LayerSaved<B: Backend> {
    x: Tensor<B, 2>,
    attention: AttentionSaved<B>,
    /// The attention block's output (before the post-attention norm, Gemma 2/3).
    attn: Tensor<B, 2>,
    /// The residual stream after attention.
    h: Tensor<B, 2>,
    mlp: MlpSaved<B>,
    /// The MLP's output (before the post-feed-forward norm, Gemma 2/3).
    ff: Tensor<B, 2>,
}

impl<B: Backend> DecoderLayer<B> {
    /// [`DecoderLayer::forward`] without a cache, for training, keeping what the backward
    /// needs: the explicit counterpart of recording the layer under autodiff.
    pub fn forward_saving(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4, Bool>,
        keep: LayerKeep<B>,
    ) -> (Tensor<B, 3>, LayerSaved<B>) {
        let [batch, seq, hidden] = x.dims();
        let [q, k, v, o, gate, up, down] = keep;
        let rows = x.clone().reshape([batch * seq, hidden]);
        let normed = self.input_layernorm.forward(x);
        let (attn, attention) = self.self_attn.forward_saving(normed, rope, mask, [q, k, v, o]);
        let (y, h, mlp, ff) = match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let h = rows.clone() + self.post_attention_layernorm.forward(attn.clone());
                let (ff, mlp) = self.mlp.forward_saving(pre_ff.forward(h.clone()), [gate, up, down]);
                (h.clone() + post_ff.forward(ff.clone()), h, mlp, ff)
            }
            _ => {
                let h = rows.clone() + attn.clone();
                let (ff, mlp) = self
                    .mlp
                    .forward_saving(self.post_attention_layernorm.forward(h.clone()), [gate, up, down]);
                (h.clone() + ff.clone(), h, mlp, ff)
            }
        };
        let saved = LayerSaved {
            x: rows,
            attention,
            attn,
            h,
            mlp,
            ff,
        };
        (y.reshape([batch, seq, hidden]), saved)
    }

    /// The gradient of the layer's input and its adapters' gradients, given the output's
    /// gradient `grad` `[batch, seq, hidden]`. The base weights and norms are frozen.
    pub fn backward(
        &self,
        saved: LayerSaved<B>,
        rope: &RopeTables<B>,
        grad: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, LayerGrads<B>) {
        let [batch, seq, hidden] = grad.dims();
        let dy = grad.reshape([batch * seq, hidden]);
        let LayerSaved {
            x,
            attention,
            attn,
            h,
            mlp,
            ff,
        } = saved;
        let (dh, d_attn, mlp_grads) = match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let (dm, mlp_grads) = self.mlp.backward(mlp, post_ff.backward(ff, dy.clone()));
                let dh = dy + pre_ff.backward(h, dm);
                let d_attn = self.post_attention_layernorm.backward(attn, dh.clone());
                (dh, d_attn, mlp_grads)
            }
            _ => {
                let (dm, mlp_grads) = self.mlp.backward(mlp, dy.clone());
                let dh = dy + self.post_attention_layernorm.backward(h, dm);
                (dh.clone(), dh, mlp_grads)
            }
        };
        let (d_normed, [q, k, v, o]) = self.self_attn.backward(attention, rope, d_attn);
        let dx = dh + self.input_layernorm.backward(x, d_normed);
        let [gate, up, down] = mlp_grads;
        (dx.reshape([batch, seq, hidden]), [q, k, v, o, gate, up, down])
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// Draws the adapters' dropout masks for `[batch, seq]` tokens from the backend's
    /// generator, in the order and shapes the autodiff forward draws them, so a seeded
    /// generator gives the same masks to the forward and to its recompute.
    pub fn draw_keep(&self, batch: usize, seq: usize, device: &B::Device) -> LayerKeep<B> {
        let attn = &self.self_attn;
        let mlp = &self.mlp;
        let projections = [
            &attn.q_proj,
            &attn.k_proj,
            &attn.v_proj,
            &attn.o_proj,
            &mlp.gate_proj,
            &mlp.up_proj,
            &mlp.down_proj,
        ];
        projections.map(|linear| {
            let lora = linear.lora.as_ref().filter(|lora| lora.dropout > 0.0)?;
            let [_, in_features] = linear.shape();
            let keep = Tensor::<B, 3>::random(
                [batch, seq, in_features],
                Distribution::Bernoulli(1.0 - lora.dropout),
                device,
            );
            Some(keep.reshape([batch * seq, in_features]))
        })
    }
}
