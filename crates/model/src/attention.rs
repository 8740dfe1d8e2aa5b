use burn::module::Module;
use burn::tensor::{Bool, DType, Tensor, backend::Backend};

use crate::cache::KvCache;
use crate::kv_share::SharedKv;
use crate::linear::{Linear, LinearSaved};
use crate::lora::LoraGrads;
use crate::matmul::matmul;
use crate::norm::{RmsNorm, rms_normalize, rms_normalize_backward};
use crate::rope::RopeTables;

/// Multi-head attention with grouped key/value heads (MHA, GQA and MQA alike).
///
/// Scores are soft-capped (Gemma 2), masked and soft-maxed in f32, as transformers' eager
/// attention does; this is the place a fused kernel will replace.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    /// `None` on a layer that uses another layer's keys and values (Gemma 3n and 4).
    pub k_proj: Option<Linear<B>>,
    /// `None` there too, and on Gemma 4's full-attention layers with `attention_k_eq_v`, whose
    /// values are the key projection's.
    pub v_proj: Option<Linear<B>>,
    pub o_proj: Linear<B>,
    /// Gemma 3, 3n and 4 normalise each query and key head before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    /// Gemma 3n and 4 also normalise each value head, without a weight: its epsilon.
    #[module(skip)]
    pub v_norm_eps: Option<f64>,
    /// The layer whose keys and values this one attends over, when it computes none.
    #[module(skip)]
    pub kv_source: Option<usize>,
    /// Whether later layers attend over this layer's keys and values.
    #[module(skip)]
    pub shares_kv: bool,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-0.5` (1 for Gemma 3n and 4).
    #[module(skip)]
    pub scaling: f64,
    #[module(skip)]
    pub softcap: Option<f64>,
}

/// Where one layer's keys and values go and come from in a forward call: the KV cache (when
/// decoding) and the keys and values layers hand to later ones.
pub struct KvSlot<'a, B: Backend> {
    pub layer: usize,
    pub cache: Option<&'a mut KvCache<B>>,
    pub shared: &'a mut SharedKv<B>,
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
        kv: KvSlot<'_, B>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (heads, head_dim) = (self.num_heads, self.head_dim);
        let mut q = split_heads(self.q_proj.forward(x.clone()), batch, seq, heads, head_dim); // [batch, heads, seq, head_dim]
        if let Some(q_norm) = &self.q_norm {
            q = q_norm.forward(q);
        }
        let q = rope.apply(q);
        let (k, v) = match self.kv_source {
            Some(source) => kv.shared.get(source),
            None => {
                let k_raw = self.k_proj().forward(x.clone());
                let v_raw = match &self.v_proj {
                    Some(v_proj) => v_proj.forward(x),
                    None => k_raw.clone(),
                };
                let (k, _) = self.keys(k_raw, rope, batch, seq);
                let (v, _) = self.values(v_raw, batch, seq);
                let (k, v) = match kv.cache {
                    Some(cache) => cache.append(kv.layer, k, v),
                    None => (k, v),
                };
                if self.shares_kv {
                    kv.shared.store(kv.layer, k.clone(), v.clone());
                }
                (k, v)
            }
        };
        let out = attend(q, k, v, mask, self.scaling, self.softcap)
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * head_dim]);
        self.o_proj.forward(out)
    }

    /// The key projection of a layer with its own keys and values.
    fn k_proj(&self) -> &Linear<B> {
        self.k_proj
            .as_ref()
            .expect("a layer that computes its keys has a k_proj (the loader builds it so)")
    }

    /// Keys `[batch, kv_heads, seq, head_dim]` from the key projection: normalised (Gemma 3+)
    /// and rotated; with the heads before the norm, for its backward.
    fn keys<const D: usize>(
        &self,
        k: Tensor<B, D>,
        rope: &RopeTables<B>,
        batch: usize,
        seq: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let unnormed = split_heads(k, batch, seq, self.num_kv_heads, self.head_dim);
        let k = match &self.k_norm {
            Some(k_norm) => k_norm.forward(unnormed.clone()),
            None => unnormed.clone(),
        };
        (rope.apply(k), unnormed)
    }

    /// Values `[batch, kv_heads, seq, head_dim]` from the value (or key) projection, normalised
    /// without a weight in Gemma 3n and 4; with the heads before the norm.
    fn values<const D: usize>(&self, v: Tensor<B, D>, batch: usize, seq: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let unnormed = split_heads(v, batch, seq, self.num_kv_heads, self.head_dim);
        let v = match self.v_norm_eps {
            Some(eps) => rms_normalize(unnormed.clone(), eps),
            None => unnormed.clone(),
        };
        (v, unnormed)
    }
}

/// `[batch·seq, n·head_dim]` or `[batch, seq, n·head_dim]` → `[batch, n, seq, head_dim]`.
fn split_heads<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    batch: usize,
    seq: usize,
    n: usize,
    head_dim: usize,
) -> Tensor<B, 4> {
    t.reshape([batch, seq, n, head_dim]).swap_dims(1, 2)
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
    q: LinearSaved<B>,
    o: LinearSaved<B>,
    /// Queries before their norm (Gemma 3+), for the norm's backward.
    q_unnormed: Tensor<B, 4>,
    /// What this layer's own keys and values need; `None` on a layer that uses another's.
    kv: Option<KvSaved<B>>,
    attend: AttendSaved<B>,
}

#[derive(Debug, Clone)]
struct KvSaved<B: Backend> {
    k: LinearSaved<B>,
    /// `None` when the values are the key projection's (`attention_k_eq_v`).
    v: Option<LinearSaved<B>>,
    /// Key and value heads before their norms.
    k_unnormed: Tensor<B, 4>,
    v_unnormed: Tensor<B, 4>,
}

impl<B: Backend> Attention<B> {
    /// [`Attention::forward`] without a cache, for training: `x` `[batch, seq, hidden]`,
    /// output `[batch·seq, hidden]`, keeping what the backward needs. A layer whose keys and
    /// values later layers use leaves them in `shared` as layer `layer`'s.
    pub fn forward_saving(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4, Bool>,
        keep: AttentionKeep<B>,
        layer: usize,
        shared: &mut SharedKv<B>,
    ) -> (Tensor<B, 2>, AttentionSaved<B>) {
        let [batch, seq, hidden] = x.dims();
        let (heads, head_dim) = (self.num_heads, self.head_dim);
        let [keep_q, keep_k, keep_v, keep_o] = keep;
        let rows = x.reshape([batch * seq, hidden]);
        let (q, saved_q) = self.q_proj.forward_saving(rows.clone(), keep_q);
        let q_unnormed = split_heads(q, batch, seq, heads, head_dim);
        let q = match &self.q_norm {
            Some(q_norm) => q_norm.forward(q_unnormed.clone()),
            None => q_unnormed.clone(),
        };
        let (k, v, kv) = match self.kv_source {
            Some(source) => {
                let (k, v) = shared.get(source);
                (k, v, None)
            }
            None => {
                let (k_raw, saved_k) = self.k_proj().forward_saving(rows.clone(), keep_k);
                let (v_raw, saved_v) = match &self.v_proj {
                    Some(v_proj) => {
                        let (v, saved) = v_proj.forward_saving(rows, keep_v);
                        (v, Some(saved))
                    }
                    None => (k_raw.clone(), None),
                };
                let (k, k_unnormed) = self.keys(k_raw, rope, batch, seq);
                let (v, v_unnormed) = self.values(v_raw, batch, seq);
                if self.shares_kv {
                    shared.store(layer, k.clone(), v.clone());
                }
                let saved = KvSaved {
                    k: saved_k,
                    v: saved_v,
                    k_unnormed,
                    v_unnormed,
                };
                (k, v, Some(saved))
            }
        };
        let (out, attend) = attend_saving(rope.apply(q), k, v, mask, self.scaling, self.softcap);
        let out = out.swap_dims(1, 2).reshape([batch * seq, heads * head_dim]);
        let (out, saved_o) = self.o_proj.forward_saving(out, keep_o);
        let saved = AttentionSaved {
            q: saved_q,
            o: saved_o,
            q_unnormed,
            kv,
            attend,
        };
        (out, saved)
    }

    /// The input's gradient `[batch·seq, hidden]` and the adapters' gradients (q, k, v, o),
    /// given the output's `[batch·seq, hidden]`. A layer attending over another's keys and
    /// values adds their gradients to `shared`; the layer that computed them takes the sum.
    pub fn backward(
        &self,
        saved: AttentionSaved<B>,
        rope: &RopeTables<B>,
        grad: Tensor<B, 2>,
        layer: usize,
        shared: &mut SharedKv<B>,
    ) -> (Tensor<B, 2>, [Option<LoraGrads<B>>; 4]) {
        let [batch, heads, seq, head_dim] = saved.q_unnormed.dims();
        let (d_out, o) = self.o_proj.backward(saved.o, grad);
        let d_out = d_out.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let (dq, dk, dv) = attend_backward(saved.attend, d_out);
        let mut dq = rope.backward(dq);
        if let Some(q_norm) = &self.q_norm {
            dq = q_norm.backward(saved.q_unnormed, dq);
        }
        let merge = |t: Tensor<B, 4>| {
            let [_, n, _, _] = t.dims();
            t.swap_dims(1, 2).reshape([batch * seq, n * head_dim])
        };
        let (dx_q, q) = self.q_proj.backward(saved.q, merge(dq));
        let Some(kv) = saved.kv else {
            let source = self.kv_source.expect("a layer without its own keys has a kv_source");
            shared.add_grads(source, dk, dv);
            return (dx_q, [q, None, None, o]);
        };
        let (dk, dv) = match shared.take_grads(layer) {
            Some((dk_shared, dv_shared)) => (dk + dk_shared, dv + dv_shared),
            None => (dk, dv),
        };
        let mut dk = rope.backward(dk);
        if let Some(k_norm) = &self.k_norm {
            dk = k_norm.backward(kv.k_unnormed, dk);
        }
        let dv = match self.v_norm_eps {
            Some(eps) => rms_normalize_backward(kv.v_unnormed, dv, eps),
            None => dv,
        };
        match (&self.v_proj, kv.v) {
            (Some(v_proj), Some(saved_v)) => {
                let (dx_k, k) = self.k_proj().backward(kv.k, merge(dk));
                let (dx_v, v) = v_proj.backward(saved_v, merge(dv));
                (dx_q + dx_k + dx_v, [q, k, v, o])
            }
            // Values from the key projection: its output's gradient is both paths'.
            _ => {
                let (dx_k, k) = self.k_proj().backward(kv.k, merge(dk) + merge(dv));
                (dx_q + dx_k, [q, k, None, o])
            }
        }
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
    let scores = if groups * seq == 1 {
        // One query row per kv head (decoding a token without grouped heads): `k · q` with q a
        // column, no operand transposed. burn 0.21's fusion runs a row times a transposed
        // operand, followed by elementwise ops, in a vector-matrix kernel that ignores the
        // operand's strides (`matmul::matmul_transposed` says more; issue 18).
        matmul(k.clone(), q.clone().reshape([batch, kv_heads, head_dim, 1]))
    } else {
        let folded = q.clone().reshape([batch, kv_heads, groups * seq, head_dim]);
        matmul(folded, k.clone().swap_dims(2, 3))
    }
    .reshape([batch, heads, seq, kv_len]);
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
