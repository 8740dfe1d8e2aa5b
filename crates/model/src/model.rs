use burn::module::Module;
use burn::tensor::{DType, Int, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::config::{GemmaConfig, LayerType};
use crate::embedding::Embedding;
use crate::layer::DecoderLayer;
use crate::linear::Linear;
use crate::mask::AttentionMask;
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
    /// Unpadded sequences continuing after `offset` cached positions.
    pub fn causal(input_ids: Tensor<B, 2, Int>, offset: usize) -> Self {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(offset as i64..(offset + seq) as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        Self {
            mask: AttentionMask::causal(batch, offset, seq, &device),
            input_ids,
            positions,
        }
    }
}

impl<B: Backend> GemmaForCausalLM<B> {
    /// The dtype the weights (and activations) run in.
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.weight.val().dtype()
    }

    /// Final hidden states `[batch, seq, hidden]`, after the last norm.
    pub fn hidden_states(&self, input: ForwardInput<B>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let cfg = &self.config;
        let dtype = self.dtype();
        let tables = |layer_type| RopeTables::new(cfg.rope(layer_type), cfg.head_dim, input.positions.clone(), dtype);
        let rope_full = tables(LayerType::Full);
        let rope_sliding = tables(LayerType::Sliding);
        let mask_full = input.mask.build(None);
        let mask_sliding = input.mask.build(cfg.sliding_window);

        let mut x = self.model.embed_tokens.forward(input.input_ids);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (rope, mask) = match layer.layer_type {
                LayerType::Full => (&rope_full, mask_full.clone()),
                LayerType::Sliding => (&rope_sliding, mask_sliding.clone()),
            };
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = layer.forward(x, rope, mask, layer_cache);
        }
        self.model.norm.forward(x)
    }

    /// Logits `[batch, seq, vocab]` for hidden states `[batch, seq, hidden]`, soft-capped
    /// when the config says so (Gemma 2).
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.model.embed_tokens.weight.val().transpose().unsqueeze::<3>()),
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

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.model.layers.len())
    }
}
