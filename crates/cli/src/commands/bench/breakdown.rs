//! Where a training step's time goes: the step's phases (measured in the step itself) and,
//! inside the decoder layers, the matmuls and the attention core, each timed alone on the
//! step's own shapes. What remains (norms, RoPE, activations, casts, LoRA's thin matmuls,
//! host overhead) is the difference.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use ember_model::HEAD_CHUNK_ROWS;
use ember_model::{AttentionMask, GemmaConfig, attend};
use serde_json::{Value, json};

/// Seconds of one step spent in the base model's matmuls and in attention, summed over
/// the layers and the passes a step makes over them.
pub struct Estimates {
    pub layer_gemm_s: f64,
    pub attention_s: f64,
    pub head_gemm_s: f64,
}

impl Estimates {
    pub fn to_json(&self) -> Value {
        json!({
            "layer_gemm_s": self.layer_gemm_s,
            "attention_s": self.attention_s,
            "head_gemm_s": self.head_gemm_s,
        })
    }
}

/// Times the matmuls and attention of one step of `config` at `batch × seq`.
///
/// With checkpointing a layer runs forward twice (once without autodiff, once to recompute)
/// and backward once; without, forward once and backward once. Frozen weights need only the
/// input gradient, one matmul per projection.
pub fn estimate<B: Backend>(
    config: &GemmaConfig,
    batch: usize,
    seq: usize,
    checkpointing: bool,
    dtype: DType,
    device: &B::Device,
) -> Estimates {
    let (h, i, d) = (config.hidden_size, config.intermediate_size, config.head_dim);
    let (q, kv) = (config.num_attention_heads * d, config.num_key_value_heads * d);
    let projections = [[q, h], [kv, h], [kv, h], [h, q], [i, h], [i, h], [h, i]];
    let layers = config.num_hidden_layers() as f64;
    let extra_forward = if checkpointing { 1.0 } else { 0.0 };

    let mut layer_gemm_s = 0.0;
    for [out, inp] in projections {
        let (forward, both) = projection::<B>(batch, seq, out, inp, dtype, device);
        layer_gemm_s += layers * (extra_forward * forward + both);
    }
    let (forward, both) = attention::<B>(config, batch, seq, dtype, device);
    let attention_s = layers * (extra_forward * forward + both);

    // The head runs in chunks of rows, forward and backward, once per step.
    let rows = batch * seq;
    let chunk = HEAD_CHUNK_ROWS.min(rows);
    let (_, both) = projection::<B>(1, chunk, config.vocab_size, h, dtype, device);
    let head_gemm_s = both * rows.div_ceil(chunk) as f64;
    Estimates {
        layer_gemm_s,
        attention_s,
        head_gemm_s,
    }
}

/// `(forward, forward + backward)` seconds of `x · Wᵀ` as the model computes it, `W` frozen.
fn projection<B: Backend>(
    batch: usize,
    seq: usize,
    out: usize,
    inp: usize,
    dtype: DType,
    device: &B::Device,
) -> (f64, f64) {
    let x = random::<B, 3>([batch, seq, inp], dtype, device);
    let w = random::<B, 2>([out, inp], dtype, device);
    let forward = time::<B, _>(device, || x.clone().matmul(w.clone().transpose().unsqueeze::<3>()));
    let x = Tensor::<Autodiff<B>, 3>::from_inner(x).require_grad();
    let w = Tensor::<Autodiff<B>, 2>::from_inner(w);
    let both = time::<B, _>(device, || {
        let y = x.clone().matmul(w.clone().transpose().unsqueeze::<3>());
        y.sum().backward()
    });
    (forward, both)
}

/// `(forward, forward + backward)` seconds of the attention core of one layer, causal.
fn attention<B: Backend>(
    config: &GemmaConfig,
    batch: usize,
    seq: usize,
    dtype: DType,
    device: &B::Device,
) -> (f64, f64) {
    let (heads, kv_heads, d) = (config.num_attention_heads, config.num_key_value_heads, config.head_dim);
    let q = random::<B, 4>([batch, heads, seq, d], dtype, device);
    let k = random::<B, 4>([batch, kv_heads, seq, d], dtype, device);
    let v = random::<B, 4>([batch, kv_heads, seq, d], dtype, device);
    let scaling = config.query_pre_attn_scalar.powf(-0.5);
    let softcap = config.attn_logit_softcapping;
    let mask = AttentionMask::<B>::causal(batch, 0, seq, seq, device).build(None);
    let forward = time::<B, _>(device, || {
        attend(q.clone(), k.clone(), v.clone(), mask.clone(), scaling, softcap)
    });
    let leaf = |t: Tensor<B, 4>| Tensor::<Autodiff<B>, 4>::from_inner(t).require_grad();
    let (q, k, v) = (leaf(q), leaf(k), leaf(v));
    let mask = Tensor::from_inner(mask);
    let both = time::<B, _>(device, || {
        let out = attend(q.clone(), k.clone(), v.clone(), mask.clone(), scaling, softcap);
        out.sum().backward()
    });
    (forward, both)
}

fn random<B: Backend, const D: usize>(shape: [usize; D], dtype: DType, device: &B::Device) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
}

/// Median seconds of `f` over 5 runs, after one that compiles and tunes its kernels. What
/// `f` returns is kept until the device is done, so no lazy backend can skip the work.
fn time<B: Backend, R>(device: &B::Device, mut f: impl FnMut() -> R) -> f64 {
    let kept = f();
    let _ = B::sync(device);
    drop(kept);
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let kept = f();
            let _ = B::sync(device);
            drop(kept);
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
