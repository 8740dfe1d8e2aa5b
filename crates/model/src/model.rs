use burn::module::Module;
use burn::tensor::{Bool, DType, Int, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::config::{GemmaConfig, LayerType};
use crate::embedding::Embedding;
use crate::kv_share::SharedKv;
use crate::layer::{DecoderLayer, LayerGrads, LayerInput, LayerKeep, LayerSaved};
use crate::linear::Linear;
use crate::mask::AttentionMask;
use crate::matmul::matmul_transposed;
use crate::norm::RmsNorm;
use crate::rope::RopeTables;

/// The decoder stack (`model.*` in the checkpoint; `model.language_model.*` in a multimodal
/// one).
#[derive(Module, Debug)]
pub struct GemmaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// Per-layer embeddings (Gemma 3n, Gemma 4's E models): each token's input to every layer,
    /// `[vocab_size_per_layer_input, layers·hidden_size_per_layer_input]`, mixed with a
    /// normalised projection of the main embedding.
    pub embed_tokens_per_layer: Option<Embedding<B>>,
    pub per_layer_model_projection: Option<Linear<B>>,
    pub per_layer_projection_norm: Option<RmsNorm<B>>,
    /// Gemma 3n's AltUp: the projections making the extra versions of the residual stream from
    /// the embedding, and those bringing them back before the final norm (empty otherwise).
    pub altup_projections: Vec<Linear<B>>,
    pub altup_unembed_projections: Vec<Linear<B>>,
}

/// A Gemma causal language model; field names are the checkpoint's tensor names.
#[derive(Module, Debug)]
pub struct GemmaForCausalLM<B: Backend> {
    pub model: GemmaModel<B>,
    /// `None` when the head is tied to `model.embed_tokens` (every released Gemma).
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: GemmaConfig,
}

/// Per-call state every layer needs: RoPE tables and masks for both layer types, the per-layer
/// inputs (Gemma 3n and 4), and the keys and values layers share with later ones.
#[derive(Debug, Clone)]
pub struct LayerContext<B: Backend> {
    rope_full: RopeTables<B>,
    rope_sliding: RopeTables<B>,
    mask_full: Tensor<B, 4, Bool>,
    mask_sliding: Tensor<B, 4, Bool>,
    /// `[batch, seq, layers, hidden_size_per_layer_input]`.
    per_layer_inputs: Option<Tensor<B, 4>>,
    pub(crate) shared: SharedKv<B>,
}

/// What one forward call sees: token ids, their positions and which keys each may attend to.
#[derive(Debug, Clone)]
pub struct ForwardInput<B: Backend> {
    /// `[batch, seq]`
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`; restart at 0 for each packed sample.
    pub positions: Tensor<B, 2, Int>,
    pub mask: AttentionMask<B>,
}

impl<B: Backend> ForwardInput<B> {
    /// Unpadded sequences continuing what `cache` holds; attention spans the cache's capacity.
    pub fn cached(input_ids: Tensor<B, 2, Int>, cache: &KvCache<B>) -> Self {
        let (offset, kv_len) = (cache.len(), cache.capacity());
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(offset as i64..(offset + seq) as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        Self {
            mask: AttentionMask::causal(batch, offset, seq, kv_len, &device),
            input_ids,
            positions,
        }
    }
}

impl<B: Backend> LayerContext<B> {
    /// The RoPE tables and mask of layers of `layer_type`.
    pub fn for_layer(&self, layer_type: LayerType) -> (&RopeTables<B>, Tensor<B, 4, Bool>) {
        match layer_type {
            LayerType::Full => (&self.rope_full, self.mask_full.clone()),
            LayerType::Sliding => (&self.rope_sliding, self.mask_sliding.clone()),
        }
    }

    /// What layer `index` (of `layer_type`) takes besides its input.
    pub fn input(&self, index: usize, layer_type: LayerType) -> LayerInput<B> {
        let (rope, mask) = self.for_layer(layer_type);
        let rope = rope.clone();
        let per_layer_input = self.per_layer_inputs.as_ref().map(|inputs| {
            let [batch, seq, _, width] = inputs.dims();
            inputs.clone().narrow(2, index, 1).reshape([batch, seq, width])
        });
        LayerInput {
            rope,
            mask,
            per_layer_input,
        }
    }
}

impl<B: Backend> GemmaForCausalLM<B> {
    /// The dtype the weights (and activations) run in.
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.weight.val().dtype()
    }

    /// Rotary tables, masks and per-layer inputs for `input`, shared by every layer of one
    /// forward call.
    pub fn layer_context(&self, input: &ForwardInput<B>) -> LayerContext<B> {
        let cfg = &self.config;
        let dtype = self.dtype();
        let tables = |layer_type| {
            RopeTables::new(
                cfg.rope(layer_type),
                cfg.head_dim_of(layer_type),
                input.positions.clone(),
                dtype,
            )
        };
        let per_layer_inputs = match cfg.per_layer_inputs {
            Some(_) => {
                let embeds = self.model.embed_tokens.forward(input.input_ids.clone());
                self.model.per_layer_inputs(cfg.family, input.input_ids.clone(), embeds)
            }
            None => None,
        };
        LayerContext {
            rope_full: tables(LayerType::Full),
            rope_sliding: tables(LayerType::Sliding),
            mask_full: input.mask.build(None),
            mask_sliding: input.mask.build(cfg.sliding_window),
            per_layer_inputs,
            shared: SharedKv::new(self.model.layers.len()),
        }
    }

    /// The first layer's input `[batch, seq, width]`: the scaled token embeddings, and with
    /// Gemma 3n's AltUp its versions side by side (`width` = versions · hidden).
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.altup_streams(self.model.embed_tokens.forward(input_ids))
    }

    /// Decoder layer `index` on `x` `[batch, seq, width]`.
    pub fn layer(
        &self,
        index: usize,
        x: Tensor<B, 3>,
        context: &mut LayerContext<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let layer = &self.model.layers[index];
        let input = context.input(index, layer.layer_type);
        layer.forward(x, input, index, cache, &mut context.shared)
    }

    /// [`Self::layer`] without a cache, for training, keeping what
    /// [`Self::layer_backward`] needs (see [`DecoderLayer::forward_saving`]).
    pub fn layer_saving(
        &self,
        index: usize,
        x: Tensor<B, 3>,
        context: &mut LayerContext<B>,
        keep: LayerKeep<B>,
    ) -> (Tensor<B, 3>, LayerSaved<B>) {
        let layer = &self.model.layers[index];
        let input = context.input(index, layer.layer_type);
        layer.forward_saving(x, input, keep, index, &mut context.shared)
    }

    /// The gradient of layer `index`'s input and its adapters' gradients, given its output's
    /// (see [`DecoderLayer::backward`]). Layers run backward in reverse order within one
    /// context, so that shared keys and values collect every user's gradient first.
    pub fn layer_backward(
        &self,
        index: usize,
        saved: LayerSaved<B>,
        context: &mut LayerContext<B>,
        grad: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, LayerGrads<B>) {
        let layer = &self.model.layers[index];
        let (rope, _) = context.for_layer(layer.layer_type);
        let rope = rope.clone();
        layer.backward(saved, &rope, grad, index, &mut context.shared)
    }

    /// The final norm, applied to the last layer's output (after merging AltUp's versions).
    pub fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, width] = x.dims();
        let merged = self.model.merge_streams(x.reshape([batch * seq, width]));
        let hidden = merged.dims()[1];
        self.model.norm.forward(merged.reshape([batch, seq, hidden]))
    }

    /// Final hidden states `[batch, seq, hidden]`, after the last norm.
    pub fn hidden_states(&self, input: ForwardInput<B>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let mut context = self.layer_context(&input);
        let seq = input.input_ids.dims()[1];
        let mut x = self.embed(input.input_ids);
        for index in 0..self.model.layers.len() {
            x = self.layer(index, x, &mut context, cache.as_deref_mut());
        }
        if let Some(cache) = cache {
            cache.advance(seq);
        }
        self.final_norm(x)
    }

    /// Logits `[batch, seq, vocab]` for hidden states `[batch, seq, hidden]`, soft-capped
    /// when the config says so (Gemma 2, 3n).
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => matmul_transposed(hidden, self.model.embed_tokens.weight.val()),
        };
        match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(&self, input: ForwardInput<B>, cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        self.logits(self.hidden_states(input, cache))
    }

    /// The module paths (`model.layers.0.per_layer_input_gate`) of the linear layers LoRA
    /// cannot adapt in Ember, outside the layers' seven projections: Gemma 3n's and 4's
    /// per-layer input blocks, AltUp, Laurel and expert routers. PEFT's `all-linear` adapts them.
    pub fn other_linear_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        let m = &self.model;
        if m.per_layer_model_projection.is_some() {
            paths.push("model.per_layer_model_projection".to_string());
        }
        for (kind, list) in [
            ("altup_projections", &m.altup_projections),
            ("altup_unembed_projections", &m.altup_unembed_projections),
        ] {
            paths.extend((0..list.len()).map(|i| format!("model.{kind}.{i}")));
        }
        for (i, layer) in m.layers.iter().enumerate() {
            let mut add = |present: bool, name: &str| {
                if present {
                    paths.push(format!("model.layers.{i}.{name}"));
                }
            };
            add(layer.per_layer_input_gate.is_some(), "per_layer_input_gate");
            add(layer.per_layer_projection.is_some(), "per_layer_projection");
            add(layer.router.is_some(), "router.proj");
            add(layer.laurel.is_some(), "laurel.linear_left");
            add(layer.laurel.is_some(), "laurel.linear_right");
            for name in ["correction_coefs", "prediction_coefs", "modality_router"] {
                add(layer.altup.is_some(), &format!("altup.{name}"));
            }
        }
        paths
    }

    /// An empty KV cache for this model, holding up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        KvCache::new(self.model.layers.len(), capacity)
    }
}
