use burn::module::Module;
use burn::tensor::{Bool, Tensor, backend::Backend};

use crate::attention::Attention;
use crate::cache::KvCache;
use crate::config::LayerType;
use crate::mlp::Mlp;
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
