use burn::module::Module;
use burn::tensor::{Bool, DType, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::linear::{Linear, LinearSaved};
use crate::lora::LoraGrads;
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
    attend_saving(q, k, v, mask, scaling, softcap).0
}

/// The adapters' dropout masks of one attention block, in projection order (q, k, v, o).
pub type AttentionKeep<B> = [Option<Tensor<B, 2>>; 4];

/// What [`Attention::backward`] needs from [`Attention::forward_saving`].
#[derive(Debug, Clone)]
pub struct AttentionSaved<B: Backend> {
    projections: [LinearSaved<B>; 4],
    /// Queries and keys before their norms (Gemma 3), for the norms' backward.
    q_unnormed: Tensor<B, 4>,
    k_unnormed: Tensor<B, 4>,
    attend: AttendSaved<B>,
}

impl<B: Backend> Attention<B> {
    /// [`Attention::forward`] without a cache, for training: `x` `[batch, seq, hidden]`,
    /// output `[batch·seq, hidden]`, keeping what the backward needs.
    pub fn forward_saving(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4, Bool>,
        keep: AttentionKeep<B>,
    ) -> (Tensor<B, 2>, AttentionSaved<B>) {
        let [batch, seq, hidden] = x.dims();
        let (heads, kv_heads, head_dim) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [keep_q, keep_k, keep_v, keep_o] = keep;
        let rows = x.reshape([batch * seq, hidden]);
        let split = |t: Tensor<B, 2>, n: usize| t.reshape([batch, seq, n, head_dim]).swap_dims(1, 2);
        let (q, saved_q) = self.q_proj.forward_saving(rows.clone(), keep_q);
        let (k, saved_k) = self.k_proj.forward_saving(rows.clone(), keep_k);
        let (v, saved_v) = self.v_proj.forward_saving(rows, keep_v);
        let (q_unnormed, k_unnormed) = (split(q, heads), split(k, kv_heads));
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => (q_norm.forward(q_unnormed.clone()), k_norm.forward(k_unnormed.clone())),
            _ => (q_unnormed.clone(), k_unnormed.clone()),
        };
        let (out, attend) = attend_saving(
            rope.apply(q),
            rope.apply(k),
            split(v, kv_heads),
            mask,
            self.scaling,
            self.softcap,
        );
        let out = out.swap_dims(1, 2).reshape([batch * seq, heads * head_dim]);
        let (out, saved_o) = self.o_proj.forward_saving(out, keep_o);
        let saved = AttentionSaved {
            projections: [saved_q, saved_k, saved_v, saved_o],
            q_unnormed,
            k_unnormed,
            attend,
        };
        (out, saved)
    }

    /// The input's gradient `[batch·seq, hidden]` and the adapters' gradients (q, k, v, o),
    /// given the output's `[batch·seq, hidden]`.
    pub fn backward(
        &self,
        saved: AttentionSaved<B>,
        rope: &RopeTables<B>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, [Option<LoraGrads<B>>; 4]) {
        let [saved_q, saved_k, saved_v, saved_o] = saved.projections;
        let [batch, heads, seq, head_dim] = saved.q_unnormed.dims();
        let (d_out, o) = self.o_proj.backward(saved_o, grad);
        let d_out = d_out.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let (dq, dk, dv) = attend_backward(saved.attend, d_out);
        let (mut dq, mut dk) = (rope.backward(dq), rope.backward(dk));
        if let (Some(q_norm), Some(k_norm)) = (&self.q_norm, &self.k_norm) {
            dq = q_norm.backward(saved.q_unnormed, dq);
            dk = k_norm.backward(saved.k_unnormed, dk);
        }
        let merge = |t: Tensor<B, 4>| {
            let [_, n, _, _] = t.dims();
            t.swap_dims(1, 2).reshape([batch * seq, n * head_dim])
        };
        let (dx_q, q) = self.q_proj.backward(saved_q, merge(dq));
        let (dx_k, k) = self.k_proj.backward(saved_k, merge(dk));
        let (dx_v, v) = self.v_proj.backward(saved_v, merge(dv));
        (dx_q + dx_k + dx_v, [q, k, v, o])
    }
}

/// What [`attend_backward`] needs from [`attend_saving`].
#[derive(Debug, Clone)]
pub struct AttendSaved<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    /// Soft-maxed scores, f32 `[batch, heads, seq, kv_len]`.
    probs: Tensor<B, 4>,
    /// `tanh(scores / cap)` when the scores are soft-capped.
    capped: Option<Tensor<B, 4>>,
    mask: Tensor<B, 4, Bool>,
    scaling: f64,
}

/// [`attend`], keeping what its backward needs.
pub fn attend_saving<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
    scaling: f64,
    softcap: Option<f64>,
) -> (Tensor<B, 4>, AttendSaved<B>) {
    let [batch, heads, seq, head_dim] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    let groups = heads / kv_heads;
    // Fold the query heads of a group into the sequence axis so that each kv head is used
    // as is, without materialising `groups` copies of K and V.
    let folded = q.clone().reshape([batch, kv_heads, groups * seq, head_dim]);
    let scores = matmul(folded, k.clone().swap_dims(2, 3)).reshape([batch, heads, seq, kv_len]);
    let dtype = scores.dtype();
    let mut scores = scores.cast(DType::F32) * scaling;
    let mut capped = None;
    if let Some(cap) = softcap {
        let t = (scores / cap).tanh();
        scores = t.clone() * cap;
        capped = Some(t);
    }
    let mask = mask.expand([batch, heads, seq, kv_len]);
    let probs = burn::tensor::activation::softmax(scores.mask_fill(mask.clone(), f32::MIN), 3);
    let out = matmul(
        probs
            .clone()
            .cast(dtype)
            .reshape([batch, kv_heads, groups * seq, kv_len]),
        v.clone(),
    )
    .reshape([batch, heads, seq, head_dim]);
    let saved = AttendSaved {
        q,
        k,
        v,
        probs,
        capped,
        mask,
        scaling,
    };
    (out, saved)
}

/// The gradients of [`attend`]'s `q`, `k` and `v` given its output's, `[batch, heads, seq,
/// head_dim]`. Keys and values used by a group of query heads get the group's sum.
pub fn attend_backward<B: Backend>(
    saved: AttendSaved<B>,
    grad: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let AttendSaved {
        q,
        k,
        v,
        probs,
        capped,
        mask,
        scaling,
    } = saved;
    let [batch, heads, seq, head_dim] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    let groups = heads / kv_heads;
    let dtype = grad.dtype();
    let fold = |t: Tensor<B, 4>, width: usize| t.reshape([batch, kv_heads, groups * seq, width]);
    let grad = fold(grad, head_dim);
    let dv = matmul(fold(probs.clone().cast(dtype), kv_len).swap_dims(2, 3), grad.clone());
    let dp = matmul(grad, v.swap_dims(2, 3))
        .reshape([batch, heads, seq, kv_len])
        .cast(DType::F32);
    // Softmax backward; masked scores were constants.
    let row_dot = (dp.clone() * probs.clone()).sum_dim(3);
    let mut ds = (probs * (dp - row_dot)).mask_fill(mask, 0.0);
    if let Some(t) = capped {
        ds = ds * (t.square().neg() + 1.0);
    }
    let ds = fold((ds * scaling).cast(dtype), kv_len);
    let dq = matmul(ds.clone(), k).reshape([batch, heads, seq, head_dim]);
    let dk = matmul(ds.swap_dims(2, 3), fold(q, head_dim));
    (dq, dk, dv)
}
