use burn::module::Module;
use burn::tensor::{Bool, DType, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::linear::Linear;
use crate::matmul::matmul;
use crate::norm::RmsNorm;
use crate::rope::RopeTables;

/// Multi-head attention with grouped key/value heads (MHA, GQA and MQA alike).
///
/// Scores are soft-capped (Gemma 2), masked and soft-maxed in f32, as transformers' eager
/// attention does; this is the place a fused kernel will replace.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// Gemma 3 normalises each query and key head before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-0.5`.
    #[module(skip)]
    pub scaling: f64,
    #[module(skip)]
    pub softcap: Option<f64>,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`
    /// - `mask`: `[batch, 1, seq, cached + seq]`, `true` = forbidden
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (heads, kv_heads, head_dim) = (self.num_heads, self.num_kv_heads, self.head_dim);

        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, head_dim]).swap_dims(1, 2);
        let mut q = split(self.q_proj.forward(x.clone()), heads); // [batch, heads, seq, head_dim]
        let mut k = split(self.k_proj.forward(x.clone()), kv_heads);
        let v = split(self.v_proj.forward(x), kv_heads);
        if let (Some(q_norm), Some(k_norm)) = (&self.q_norm, &self.k_norm) {
            q = q_norm.forward(q);
            k = k_norm.forward(k);
        }
        let q = rope.apply(q);
        let k = rope.apply(k);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let out = attend(q, k, v, mask, self.scaling, self.softcap)
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * head_dim]);
        self.o_proj.forward(out)
    }
}

/// Scaled dot-product attention with grouped key/value heads: the part a fused kernel will
/// replace. Scores are soft-capped (Gemma 2), masked and soft-maxed in f32, as transformers'
/// eager attention does.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, kv_len, head_dim]`
/// - `mask`: `[batch, 1, seq, kv_len]`, `true` = forbidden
/// - output: `[batch, heads, seq, head_dim]`
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
    scaling: f64,
    softcap: Option<f64>,
) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    let groups = heads / kv_heads;
    // Fold the query heads of a group into the sequence axis so that each kv head is used
    // as is, without materialising `groups` copies of K and V.
    let q = q.reshape([batch, kv_heads, groups * seq, head_dim]);
    let scores = matmul(q, k.swap_dims(2, 3)).reshape([batch, heads, seq, kv_len]);
    let dtype = scores.dtype();
    let mut scores = scores.cast(DType::F32) * scaling;
    if let Some(cap) = softcap {
        scores = (scores / cap).tanh() * cap;
    }
    let scores = scores.mask_fill(mask.expand([batch, heads, seq, kv_len]), f32::MIN);
    let probs = burn::tensor::activation::softmax(scores, 3).cast(dtype);
    matmul(probs.reshape([batch, kv_heads, groups * seq, kv_len]), v).reshape([batch, heads, seq, head_dim])
}
