use burn::backend::NdArray;
use ember_model::{Activation, DecoderLayer, GemmaConfig, LayerType};

use crate::activation::gated;
use crate::attention::CacheAttention;
use crate::cache::LayerCache;
use crate::error::{CpuError, Result};
use crate::norm::Norm;
use crate::projection::Projection;
use crate::rotary::Rotary;

/// One Gemma 1, 2 or 3 decoder layer, its weights read in place, with its KV cache.
pub(crate) struct Layer {
    input_norm: Norm,
    post_attention_norm: Norm,
    /// Gemma 2 and 3's norms before and after the MLP ("sandwich" norms).
    feed_forward_norms: Option<(Norm, Norm)>,
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    /// Gemma 3 normalises each query and key head before RoPE.
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    gate: Projection,
    up: Projection,
    down: Projection,
    activation: Activation,
    rotary: Rotary,
    attention: CacheAttention,
    /// One per sequence.
    caches: Vec<LayerCache>,
}

impl Layer {
    /// Layer `index` of a model of `config`, with caches of `capacity` positions for `rows`
    /// sequences.
    pub fn new(
        layer: &DecoderLayer<NdArray>,
        index: usize,
        config: &GemmaConfig,
        rows: usize,
        capacity: usize,
    ) -> Result<Self> {
        let path = |name: &str| format!("model.layers.{index}.{name}");
        let attn = &layer.self_attn;
        let own = |p: Option<&ember_model::Linear<NdArray>>, name: &str| {
            let p = p.ok_or_else(|| {
                CpuError::Unsupported(format!(
                    "layer {index} has no {name}: it uses another layer's keys and values"
                ))
            })?;
            Projection::of(p, &path(&format!("self_attn.{name}")))
        };
        let norm = |n: &ember_model::RmsNorm<NdArray>, name: &str| Norm::of(n, &path(name));
        let feed_forward_norms = match (&layer.pre_feedforward_layernorm, &layer.post_feedforward_layernorm) {
            (Some(pre), Some(post)) => Some((
                norm(pre, "pre_feedforward_layernorm")?,
                norm(post, "post_feedforward_layernorm")?,
            )),
            _ => None,
        };
        let window = match layer.layer_type {
            LayerType::Sliding => config.sliding_window,
            LayerType::Full => None,
        };
        Ok(Self {
            input_norm: norm(&layer.input_layernorm, "input_layernorm")?,
            post_attention_norm: norm(&layer.post_attention_layernorm, "post_attention_layernorm")?,
            feed_forward_norms,
            q: Projection::of(&attn.q_proj, &path("self_attn.q_proj"))?,
            k: own(attn.k_proj.as_ref(), "k_proj")?,
            v: own(attn.v_proj.as_ref(), "v_proj")?,
            o: Projection::of(&attn.o_proj, &path("self_attn.o_proj"))?,
            q_norm: attn.q_norm.as_ref().map(|n| norm(n, "self_attn.q_norm")).transpose()?,
            k_norm: attn.k_norm.as_ref().map(|n| norm(n, "self_attn.k_norm")).transpose()?,
            gate: Projection::of(&layer.mlp.gate_proj, &path("mlp.gate_proj"))?,
            up: Projection::of(&layer.mlp.up_proj, &path("mlp.up_proj"))?,
            down: Projection::of(&layer.mlp.down_proj, &path("mlp.down_proj"))?,
            activation: layer.mlp.activation,
            rotary: Rotary::new(config.rope(layer.layer_type), attn.head_dim),
            attention: CacheAttention {
                heads: attn.num_heads,
                kv_heads: attn.num_kv_heads,
                head_dim: attn.head_dim,
                scaling: attn.scaling as f32,
                softcap: attn.softcap.map(|c| c as f32),
                window,
            },
            caches: (0..rows)
                .map(|_| LayerCache::new(attn.num_kv_heads, capacity, attn.head_dim))
                .collect(),
        })
    }

    /// The layer on the residual stream `x` `[n, hidden]` of the tokens `at` (each its
    /// sequence and position), in place; their keys and values join their sequences' caches.
    pub fn forward(&mut self, x: &mut [f32], at: &[(usize, usize)]) {
        let normed = self.input_norm.of_rows(x);
        let attn = self.attend(&normed, at);
        match &self.feed_forward_norms {
            Some((pre, post)) => {
                let mut attn = attn;
                // Gemma 2 and 3 normalise each block's output before adding it.
                self.post_attention_norm.apply(&mut attn);
                add(x, &attn);
                let mut ff = self.mlp(&pre.of_rows(x));
                post.apply(&mut ff);
                add(x, &ff);
            }
            None => {
                add(x, &attn);
                let ff = self.mlp(&self.post_attention_norm.of_rows(x));
                add(x, &ff);
            }
        }
    }

    /// Attention with its output projection, `[n, hidden]`.
    fn attend(&mut self, x: &[f32], at: &[(usize, usize)]) -> Vec<f32> {
        let mut q = self.q.apply(x);
        let mut k = self.k.apply(x);
        let v = self.v.apply(x);
        if let Some(norm) = &self.q_norm {
            norm.apply(&mut q);
        }
        if let Some(norm) = &self.k_norm {
            norm.apply(&mut k);
        }
        let a = &self.attention;
        let (q_width, kv_width) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
        for (q, &(_, position)) in q.chunks_exact_mut(q_width).zip(at) {
            self.rotary.apply(q, position);
        }
        for ((k, v), &(sequence, position)) in k.chunks_exact_mut(kv_width).zip(v.chunks_exact(kv_width)).zip(at) {
            self.rotary.apply(k, position);
            self.caches[sequence].write(position, k, v);
        }
        let mut out = vec![0f32; q.len()];
        a.attend(&q, at, &self.caches, &mut out);
        self.o.apply(&out)
    }

    /// `down(act(gate(x)) · up(x))`.
    fn mlp(&self, x: &[f32]) -> Vec<f32> {
        let mut gate = self.gate.apply(x);
        gated(self.activation, &mut gate, &self.up.apply(x));
        self.down.apply(&gate)
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
