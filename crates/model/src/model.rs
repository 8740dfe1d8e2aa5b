use burn::module::Module;
use burn::tensor::{Bool, DType, Int, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::config::{GemmaConfig, LayerType};
use crate::embedding::Embedding;
use crate::layer::DecoderLayer;
use crate::linear::Linear;
use crate::mask::AttentionMask;
use crate::matmul::matmul_transposed;
use crate::norm::RmsNorm;
use crate::rope::RopeTables;

/// The decoder stack (`model.*` in the checkpoint).
#[derive(Module, Debug)]
pub struct GemmaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
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

/// Per-call tensors every layer needs: RoPE tables and masks for both layer types.
#[derive(Debug, Clone)]
pub struct LayerContext<B: Backend> {
    rope_full: RopeTables<B>,
    rope_sliding: RopeTables<B>,
    mask_full: Tensor<B, 4, Bool>,
    mask_sliding: Tensor<B, 4, Bool>,
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
}

impl<B: Backend> GemmaForCausalLM<B> {
    /// The dtype the weights (and activations) run in.
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.weight.val().dtype()
    }

    /// Rotary tables and masks for `input`, shared by every layer of one forward call.
    pub fn layer_context(&self, input: &ForwardInput<B>) -> LayerContext<B> {
        let cfg = &self.config;
        let dtype = self.dtype();
        let tables = |layer_type| RopeTables::new(cfg.rope(layer_type), cfg.head_dim, input.positions.clone(), dtype);
        LayerContext {
            rope_full: tables(LayerType::Full),
            rope_sliding: tables(LayerType::Sliding),
            mask_full: input.mask.build(None),
            mask_sliding: input.mask.build(cfg.sliding_window),
        }
    }

    /// Scaled token embeddings `[batch, seq, hidden]`.
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.embed_tokens.forward(input_ids)
    }

    /// Decoder layer `index` on `x` `[batch, seq, hidden]`.
    pub fn layer(
        &self,
        index: usize,
        x: Tensor<B, 3>,
        context: &LayerContext<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let layer = &self.model.layers[index];
        let (rope, mask) = context.for_layer(layer.layer_type);
        layer.forward(x, rope, mask, cache.map(|c| (c, index)))
    }

    /// The final norm, applied to the last layer's output.
    pub fn final_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.model.norm.forward(x)
    }

    /// Final hidden states `[batch, seq, hidden]`, after the last norm.
    pub fn hidden_states(&self, input: ForwardInput<B>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let context = self.layer_context(&input);
        let mut x = self.embed(input.input_ids);
        for index in 0..self.model.layers.len() {
            x = self.layer(index, x, &context, cache.as_deref_mut());
        }
        self.final_norm(x)
    }

    /// Logits `[batch, seq, vocab]` for hidden states `[batch, seq, hidden]`, soft-capped
    /// when the config says so (Gemma 2).
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

    /// An empty KV cache for this model, holding up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        KvCache::new(self.model.layers.len(), capacity)
    }
}
