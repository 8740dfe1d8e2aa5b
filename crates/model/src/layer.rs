use burn::module::{Module, Param};
use burn::tensor::{Bool, Distribution, Tensor, backend::Backend};

use crate::altup::AltUp;
use crate::attention::{Attention, AttentionSaved, KvSlot};
use crate::cache::KvCache;
use crate::config::LayerType;
use crate::kv_share::SharedKv;
use crate::laurel::Laurel;
use crate::layer_altup::AltUpLayerSaved;
use crate::linear::Linear;
use crate::lora::{Lora, LoraGrads};
use crate::mlp::{Mlp, MlpSaved};
use crate::moe::{Experts, ExpertsSaved, Router, RouterSaved};
use crate::norm::RmsNorm;
use crate::per_layer::{PerLayerBlock, PerLayerSaved};
use crate::rope::RopeTables;

/// One decoder block. Gemma 1 normalises before attention and MLP; Gemma 2 and later also
/// normalise their outputs ("sandwich" norms: the two `post_*`/`pre_feedforward` norms).
/// Gemma 4 adds a per-layer input block, a mixture of experts beside the MLP and an output
/// scalar; Gemma 3n runs the block inside AltUp's prediction and correction, with Laurel
/// beside attention ([`crate::layer_altup`]).
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    /// The per-layer input block (Gemma 3n, Gemma 4's E models).
    pub per_layer_input_gate: Option<Linear<B>>,
    pub per_layer_projection: Option<Linear<B>>,
    pub post_per_layer_input_norm: Option<RmsNorm<B>>,
    /// Gemma 4's mixture of experts, with the norms around it; the MLP's own output is then
    /// normalised by `post_feedforward_layernorm_1`.
    pub router: Option<Router<B>>,
    pub experts: Option<Experts<B>>,
    pub pre_feedforward_layernorm_2: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm_1: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm_2: Option<RmsNorm<B>>,
    /// Gemma 4: `[1]`, multiplying the layer's output.
    pub layer_scalar: Option<Param<Tensor<B, 1>>>,
    /// Gemma 3n.
    pub altup: Option<AltUp<B>>,
    pub laurel: Option<Laurel<B>>,
    #[module(skip)]
    pub layer_type: LayerType,
}

/// What a layer takes besides its input in one forward call.
#[derive(Debug, Clone)]
pub struct LayerInput<B: Backend> {
    pub rope: RopeTables<B>,
    pub mask: Tensor<B, 4, Bool>,
    /// The layer's slice of the per-layer inputs, `[batch, seq, hidden_size_per_layer_input]`.
    pub per_layer_input: Option<Tensor<B, 3>>,
}

/// The mixture of experts' parts of a layer.
struct Moe<'a, B: Backend> {
    router: &'a Router<B>,
    experts: &'a Experts<B>,
    pre: &'a RmsNorm<B>,
    post_mlp: &'a RmsNorm<B>,
    post_experts: &'a RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// `[batch, seq, width] -> [batch, seq, width]` (`width` is `hidden_size`, or AltUp's
    /// versions side by side). `index` is the layer's place in the model, which its keys and
    /// values are cached and shared under.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        input: LayerInput<B>,
        index: usize,
        cache: Option<&mut KvCache<B>>,
        shared: &mut SharedKv<B>,
    ) -> Tensor<B, 3> {
        let kv = KvSlot {
            layer: index,
            cache,
            shared,
        };
        if self.altup.is_some() {
            return self.forward_altup(x, input, kv);
        }
        let [batch, seq, hidden] = x.dims();
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), &input.rope, input.mask, kv);
        let y = match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let h = x + self.post_attention_layernorm.forward(attn);
                let rows = h.clone().reshape([batch * seq, hidden]);
                let ff = self.feed_forward(rows, pre_ff);
                h + post_ff.forward(ff).reshape([batch, seq, hidden])
            }
            _ => {
                let h = x + attn;
                let ff = self.mlp.forward(self.post_attention_layernorm.forward(h.clone()));
                h + ff
            }
        };
        let mut y = y.reshape([batch * seq, hidden]);
        if let (Some(block), Some(per_layer)) = (self.per_layer_block(), input.per_layer_input) {
            let width = per_layer.dims()[2];
            y = y.clone() + block.forward(y, per_layer.reshape([batch * seq, width]));
        }
        self.scale_output(y).reshape([batch, seq, hidden])
    }

    /// The MLP on the pre-feed-forward norm of `h` `[n, hidden]`, and with experts, both
    /// branches normalised and added.
    fn feed_forward(&self, h: Tensor<B, 2>, pre_ff: &RmsNorm<B>) -> Tensor<B, 2> {
        let [n, hidden] = h.dims();
        let mlp = self
            .mlp
            .forward(pre_ff.forward(h.clone()).reshape([1, n, hidden]))
            .reshape([n, hidden]);
        match self.moe() {
            None => mlp,
            Some(moe) => {
                let routing = moe.router.forward(h.clone());
                let experts = moe.experts.forward(moe.pre.forward(h), &routing);
                moe.post_mlp.forward(mlp) + moe.post_experts.forward(experts)
            }
        }
    }

    fn moe(&self) -> Option<Moe<'_, B>> {
        Some(Moe {
            router: self.router.as_ref()?,
            experts: self.experts.as_ref()?,
            pre: self.pre_feedforward_layernorm_2.as_ref()?,
            post_mlp: self.post_feedforward_layernorm_1.as_ref()?,
            post_experts: self.post_feedforward_layernorm_2.as_ref()?,
        })
    }

    pub(crate) fn per_layer_block(&self) -> Option<PerLayerBlock<'_, B>> {
        Some(PerLayerBlock {
            gate: self.per_layer_input_gate.as_ref()?,
            projection: self.per_layer_projection.as_ref()?,
            norm: self.post_per_layer_input_norm.as_ref()?,
            activation: self.mlp.activation,
        })
    }

    /// `y · layer_scalar` (Gemma 4).
    fn scale_output(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.layer_scalar {
            Some(scalar) => y * scalar.val().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// The adapters' dropout masks of one decoder layer, in the order the forward uses the
/// projections: q, k, v, o, gate, up, down. `None` where a projection has no adapter or no
/// dropout.
pub type LayerKeep<B> = [Option<Tensor<B, 2>>; 7];

/// The adapters' gradients of one decoder layer, in [`ADAPTER_NAMES`]' order: the seven
/// projections' as in [`LayerKeep`], then the experts' two weights' (PEFT's layout).
pub type LayerGrads<B> = [Option<LoraGrads<B>>; 9];

/// What [`DecoderLayer::backward`] needs from [`DecoderLayer::forward_saving`].
#[derive(Debug, Clone)]
pub struct LayerSaved<B: Backend>(pub(crate) Saved<B>);

#[derive(Debug, Clone)]
pub(crate) enum Saved<B: Backend> {
    Standard(Box<StandardSaved<B>>),
    AltUp(Box<AltUpLayerSaved<B>>),
}

#[derive(Debug, Clone)]
pub(crate) struct StandardSaved<B: Backend> {
    x: Tensor<B, 2>,
    attention: AttentionSaved<B>,
    /// The attention block's output (before the post-attention norm, Gemma 2+).
    attn: Tensor<B, 2>,
    /// The residual stream after attention.
    h: Tensor<B, 2>,
    mlp: MlpSaved<B>,
    /// The feed-forward output (before the post-feed-forward norm, Gemma 2+).
    ff: Tensor<B, 2>,
    moe: Option<MoeSaved<B>>,
    per_layer: Option<PerLayerSaved<B>>,
}

#[derive(Debug, Clone)]
struct MoeSaved<B: Backend> {
    /// The MLP's and the experts' outputs before their norms.
    mlp: Tensor<B, 2>,
    experts: Tensor<B, 2>,
    router: RouterSaved<B>,
    experts_saved: ExpertsSaved<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// [`DecoderLayer::forward`] without a cache, for training, keeping what the backward
    /// needs: the explicit counterpart of recording the layer under autodiff.
    pub fn forward_saving(
        &self,
        x: Tensor<B, 3>,
        input: LayerInput<B>,
        keep: LayerKeep<B>,
        index: usize,
        shared: &mut SharedKv<B>,
    ) -> (Tensor<B, 3>, LayerSaved<B>) {
        if self.altup.is_some() {
            return self.forward_saving_altup(x, input, keep, index, shared);
        }
        let [batch, seq, hidden] = x.dims();
        let [q, k, v, o, gate, up, down] = keep;
        let rows = x.clone().reshape([batch * seq, hidden]);
        let normed = self.input_layernorm.forward(x);
        let (attn, attention) =
            self.self_attn
                .forward_saving(normed, &input.rope, input.mask, [q, k, v, o], index, shared);
        let (y, h, mlp, ff, moe) = match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let h = rows.clone() + self.post_attention_layernorm.forward(attn.clone());
                let (mlp_out, mlp) = self.mlp.forward_saving(pre_ff.forward(h.clone()), [gate, up, down]);
                let (ff, moe) = match self.moe() {
                    None => (mlp_out, None),
                    Some(parts) => {
                        let (routing, router) = parts.router.forward_saving(h.clone());
                        let (experts, experts_saved) =
                            parts.experts.forward_saving(parts.pre.forward(h.clone()), &routing);
                        let ff = parts.post_mlp.forward(mlp_out.clone()) + parts.post_experts.forward(experts.clone());
                        let saved = MoeSaved {
                            mlp: mlp_out,
                            experts,
                            router,
                            experts_saved,
                        };
                        (ff, Some(saved))
                    }
                };
                (h.clone() + post_ff.forward(ff.clone()), h, mlp, ff, moe)
            }
            _ => {
                let h = rows.clone() + attn.clone();
                let (ff, mlp) = self
                    .mlp
                    .forward_saving(self.post_attention_layernorm.forward(h.clone()), [gate, up, down]);
                (h.clone() + ff.clone(), h, mlp, ff, None)
            }
        };
        let (y, per_layer) = match (self.per_layer_block(), input.per_layer_input) {
            (Some(block), Some(per_layer)) => {
                let width = per_layer.dims()[2];
                let (update, saved) = block.forward_saving(y.clone(), per_layer.reshape([batch * seq, width]));
                (y + update, Some(saved))
            }
            _ => (y, None),
        };
        let saved = StandardSaved {
            x: rows,
            attention,
            attn,
            h,
            mlp,
            ff,
            moe,
            per_layer,
        };
        let y = self.scale_output(y).reshape([batch, seq, hidden]);
        (y, LayerSaved(Saved::Standard(Box::new(saved))))
    }

    /// The gradient of the layer's input and its adapters' gradients, given the output's
    /// gradient `grad` `[batch, seq, width]`. The base weights and norms are frozen. Shared
    /// keys and values pass their gradients through `shared` (see [`Attention::backward`]).
    pub fn backward(
        &self,
        saved: LayerSaved<B>,
        rope: &RopeTables<B>,
        grad: Tensor<B, 3>,
        index: usize,
        shared: &mut SharedKv<B>,
    ) -> (Tensor<B, 3>, LayerGrads<B>) {
        let saved = match saved.0 {
            Saved::Standard(saved) => *saved,
            Saved::AltUp(saved) => return self.backward_altup(*saved, rope, grad, index, shared),
        };
        let [batch, seq, hidden] = grad.dims();
        let mut dy = self.scale_output(grad.reshape([batch * seq, hidden]));
        let StandardSaved {
            x,
            attention,
            attn,
            h,
            mlp,
            ff,
            moe,
            per_layer,
        } = saved;
        if let (Some(block), Some(saved)) = (self.per_layer_block(), per_layer) {
            dy = dy.clone() + block.backward(saved, dy);
        }
        let mut expert_grads = [None, None];
        let (dh, d_attn, mlp_grads) = match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            (Some(pre_ff), Some(post_ff)) => {
                let d_ff = post_ff.backward(ff, dy.clone());
                let (d_mlp, d_h_experts) = match (self.moe(), moe) {
                    (Some(parts), Some(moe)) => {
                        let d_mlp = parts.post_mlp.backward(moe.mlp, d_ff.clone());
                        let d_experts = parts.post_experts.backward(moe.experts, d_ff);
                        let (d_in, d_weights, grads) = parts.experts.backward(moe.experts_saved, d_experts);
                        expert_grads = [grads.gate_up_proj, grads.down_proj];
                        let d_h = parts.pre.backward(h.clone(), d_in) + parts.router.backward(moe.router, d_weights);
                        (d_mlp, Some(d_h))
                    }
                    _ => (d_ff, None),
                };
                let (dm, mlp_grads) = self.mlp.backward(mlp, d_mlp);
                let mut dh = dy + pre_ff.backward(h, dm);
                if let Some(d_h_experts) = d_h_experts {
                    dh = dh + d_h_experts;
                }
                let d_attn = self.post_attention_layernorm.backward(attn, dh.clone());
                (dh, d_attn, mlp_grads)
            }
            _ => {
                let (dm, mlp_grads) = self.mlp.backward(mlp, dy.clone());
                let dh = dy + self.post_attention_layernorm.backward(h, dm);
                (dh.clone(), dh, mlp_grads)
            }
        };
        let (d_normed, [q, k, v, o]) = self.self_attn.backward(attention, rope, d_attn, index, shared);
        let dx = dh + self.input_layernorm.backward(x, d_normed);
        let [gate, up, down] = mlp_grads;
        let [experts_gate_up, experts_down] = expert_grads;
        let grads = [q, k, v, o, gate, up, down, experts_gate_up, experts_down];
        (dx.reshape([batch, seq, hidden]), grads)
    }
}

/// The module paths of a layer's seven projections under `model.layers.<i>`, in
/// [`LayerKeep`]'s order.
pub const PROJECTION_NAMES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The paths under `model.layers.<i>` of everything in a layer that can carry an adapter, in
/// [`LayerGrads`]' order: the seven projections, then the experts' two 3-D weights (parameters,
/// not modules: PEFT's `target_parameters`).
pub const ADAPTER_NAMES: [&str; 9] = [
    PROJECTION_NAMES[0],
    PROJECTION_NAMES[1],
    PROJECTION_NAMES[2],
    PROJECTION_NAMES[3],
    PROJECTION_NAMES[4],
    PROJECTION_NAMES[5],
    PROJECTION_NAMES[6],
    "experts.gate_up_proj",
    "experts.down_proj",
];

impl<B: Backend> DecoderLayer<B> {
    /// The layer's seven projections in [`LayerKeep`]'s order; `None` where the layer has none
    /// (the keys and values of a layer that shares another's).
    pub fn projections(&self) -> [Option<&Linear<B>>; 7] {
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        [
            Some(&attn.q_proj),
            attn.k_proj.as_ref(),
            attn.v_proj.as_ref(),
            Some(&attn.o_proj),
            Some(&mlp.gate_proj),
            Some(&mlp.up_proj),
            Some(&mlp.down_proj),
        ]
    }

    /// [`Self::projections`], mutably.
    pub fn projections_mut(&mut self) -> [Option<&mut Linear<B>>; 7] {
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        [
            Some(&mut attn.q_proj),
            attn.k_proj.as_mut(),
            attn.v_proj.as_mut(),
            Some(&mut attn.o_proj),
            Some(&mut mlp.gate_proj),
            Some(&mut mlp.up_proj),
            Some(&mut mlp.down_proj),
        ]
    }

    /// The layer's adapters in [`ADAPTER_NAMES`]' order; `None` where there is none.
    pub fn adapters(&self) -> [Option<&Lora<B>>; 9] {
        let [q, k, v, o, gate, up, down] = self.projections().map(|linear| linear?.lora.as_ref());
        let (gate_up_proj, down_proj) = match &self.experts {
            Some(experts) => (experts.lora.gate_up_proj.as_ref(), experts.lora.down_proj.as_ref()),
            None => (None, None),
        };
        [q, k, v, o, gate, up, down, gate_up_proj, down_proj]
    }

    /// [`Self::adapters`], mutably.
    pub fn adapters_mut(&mut self) -> [Option<&mut Lora<B>>; 9] {
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        let (gate_up_proj, down_proj) = match self.experts.as_mut() {
            Some(experts) => (experts.lora.gate_up_proj.as_mut(), experts.lora.down_proj.as_mut()),
            None => (None, None),
        };
        [
            attn.q_proj.lora.as_mut(),
            attn.k_proj.as_mut().and_then(|linear| linear.lora.as_mut()),
            attn.v_proj.as_mut().and_then(|linear| linear.lora.as_mut()),
            attn.o_proj.lora.as_mut(),
            mlp.gate_proj.lora.as_mut(),
            mlp.up_proj.lora.as_mut(),
            mlp.down_proj.lora.as_mut(),
            gate_up_proj,
            down_proj,
        ]
    }

    /// Draws the adapters' dropout masks for `[batch, seq]` tokens from the backend's
    /// generator, in the order and shapes the autodiff forward draws them, so a seeded
    /// generator gives the same masks to the forward and to its recompute.
    pub fn draw_keep(&self, batch: usize, seq: usize, device: &B::Device) -> LayerKeep<B> {
        self.projections().map(|linear| {
            let linear = linear?;
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
