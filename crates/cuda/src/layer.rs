//! One decoder layer on the device: the forward (leaving in scratch everything the backward
//! needs) and the backward for frozen base weights — the CUDA counterpart of
//! `DecoderLayer::forward_saving` and `DecoderLayer::backward`, checked against them.
//!
//! Each projection group (q/k/v, o, gate/up, down) is one base GEMM per member plus, with
//! adapters, one GEMM for the group's `x·Aᵀ` and one accumulating `z·(sB)ᵀ` into each member's
//! output. Backward: input gradients only through the frozen weights, `dA` for the whole group
//! in one GEMM, `dB` per adapter.

use ember_model::{Activation, DecoderLayer, LayerType};

use crate::adapters::{Adapters, GATE, GROUPS, K, O, Q, UP, V, projections};
use crate::batch::BatchData;
use crate::bridge::{CudaBackend, Held, Holds};
use crate::error::Result;
use crate::gemm::{Elem, Mat};
use crate::ops::{AttnIo, AttnShape, Cuda};
use crate::scratch::{Dims, Scratch};

/// A layer's frozen tensors' pointers, valid while the micro-batch holds them.
pub struct LayerWeights {
    /// input, post-attention, pre- and post-feed-forward (Gemma 2/3), q and k norms (Gemma 3).
    norms: [Option<u64>; 6],
    projections: [u64; 7],
}

impl LayerWeights {
    /// Every layer's weights, held in one trip (see [`Holds`]); the pointers are valid while
    /// the returned [`Held`]s live.
    pub fn hold_all(layers: &[DecoderLayer<CudaBackend>]) -> Result<(Vec<Self>, Vec<Held>)> {
        let mut holds = Holds::default();
        let mut slots = Vec::with_capacity(layers.len());
        for layer in layers {
            let mut norm = |n: Option<&ember_model::RmsNorm<CudaBackend>>| n.map(|n| holds.add(&n.weight.val()));
            let attn = &layer.self_attn;
            let norms = [
                norm(Some(&layer.input_layernorm)),
                norm(Some(&layer.post_attention_layernorm)),
                norm(layer.pre_feedforward_layernorm.as_ref()),
                norm(layer.post_feedforward_layernorm.as_ref()),
                norm(attn.q_norm.as_ref()),
                norm(attn.k_norm.as_ref()),
            ];
            let projections = projections(layer).map(|linear| holds.add(&linear.weight.val()));
            slots.push((norms, projections));
        }
        let held = holds.hold()?;
        let weights = slots
            .into_iter()
            .map(|(norms, projections)| Self {
                norms: norms.map(|i| i.map(|i| held[i].ptr)),
                projections: projections.map(|i| held[i].ptr),
            })
            .collect();
        Ok((weights, held))
    }

    fn norm(&self, i: usize) -> Option<u64> {
        self.norms[i]
    }
}

/// Everything one layer's kernels need besides its input and output.
pub struct LayerRun<'a> {
    pub index: usize,
    pub weights: &'a LayerWeights,
    pub adapters: &'a Adapters,
    pub data: &'a BatchData,
    pub attn: AttnShape,
    pub inv_freq: u64,
    /// Gemma 2/3's four norms around attention and MLP.
    pub sandwich: bool,
    pub erf: bool,
    pub eps: f32,
    /// Each projection's LoRA dropout mask (f32 `[tokens, in]` of 0/1) and keep probability.
    pub keep: [Option<(u64, f32)>; 7],
}

impl<'a> LayerRun<'a> {
    pub fn new(
        index: usize,
        layer: &DecoderLayer<CudaBackend>,
        weights: &'a LayerWeights,
        adapters: &'a Adapters,
        data: &'a BatchData,
        sliding_window: Option<usize>,
        eps: f64,
        keep: [Option<(u64, f32)>; 7],
    ) -> Self {
        let attn = &layer.self_attn;
        let sliding = layer.layer_type == LayerType::Sliding;
        Self {
            index,
            weights,
            adapters,
            data,
            attn: AttnShape {
                batch: data.batch,
                seq: data.seq,
                heads: attn.num_heads,
                kv_heads: attn.num_kv_heads,
                head_dim: attn.head_dim,
                window: if sliding { sliding_window.unwrap_or(0) } else { 0 },
                scale: attn.scaling as f32,
                cap: attn.softcap.unwrap_or(0.0) as f32,
            },
            inv_freq: if sliding {
                data.inv_freq_sliding.ptr
            } else {
                data.inv_freq_full.ptr
            },
            sandwich: layer.pre_feedforward_layernorm.is_some(),
            erf: layer.mlp.activation == Activation::GeluErf,
            eps: eps as f32,
            keep,
        }
    }
}

/// `[out, in]` of projection `p`.
fn shape(d: &Dims, p: usize) -> (usize, usize) {
    match p {
        Q => (d.q, d.hidden),
        K | V => (d.kv, d.hidden),
        O => (d.hidden, d.q),
        GATE | UP => (d.intermediate, d.hidden),
        _ => (d.hidden, d.intermediate),
    }
}

/// Runs layer `run` on `x` (`[tokens, hidden]`), writing `y`; activations stay in `scratch`.
/// Without `y` (the backward's recompute) only what the backward reads is computed: the layer's
/// output is not, nor, under Gemma 1's single post-attention norm, the down projection (its
/// adapter's `x·Aᵀ` only) — a sixth of the layer's GEMM work — nor the attention when the
/// forward kept its output ([`Scratch::saved_attention`]).
pub fn forward(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, y: Option<u64>) -> Result<()> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let n = run.data.tokens();
    let w = run.weights;
    let a = &run.attn;
    cx.rms_norm(e, x, w.norm(0).expect("input norm"), p.a, n, d.hidden, run.eps)?;
    project(cx, s, run, 0, p.a, &[p.q_raw, p.k_raw, p.v])?;
    let b = run.data;
    cx.rope(
        e,
        p.q_raw,
        p.q,
        w.norm(4),
        b.positions.ptr,
        run.inv_freq,
        n,
        a.heads,
        a.head_dim,
        run.eps,
    )?;
    cx.rope(
        e,
        p.k_raw,
        p.k,
        w.norm(5),
        b.positions.ptr,
        run.inv_freq,
        n,
        a.kv_heads,
        a.head_dim,
        run.eps,
    )?;
    let io = attn_io(s, run);
    if y.is_some() || s.saved_attention(run.index).is_none() {
        cx.attention_forward(e, *a, io)?;
    }
    project(cx, s, run, 1, io.o, &[p.attn])?;
    let (post_attn, next) = if run.sandwich {
        (w.norm(1), w.norm(2))
    } else {
        (None, w.norm(1))
    };
    cx.residual_norm(e, x, p.attn, post_attn, next, p.h, Some(p.m), n, d.hidden, run.eps)?;
    project(cx, s, run, 2, p.m, &[p.g, p.u])?;
    cx.geglu(e, p.g, p.u, p.p, n * d.intermediate, run.erf)?;
    match y {
        Some(y) => {
            project(cx, s, run, 3, p.p, &[p.d])?;
            let post_ff = if run.sandwich { w.norm(3) } else { None };
            cx.residual_norm(e, p.h, p.d, post_ff, None, y, None, n, d.hidden, run.eps)
        }
        // The post-feed-forward norm's backward reads the down projection's output.
        None if run.sandwich => project(cx, s, run, 3, p.p, &[p.d]),
        None => project_adapters(cx, s, run, 3, p.p, None).map(drop),
    }
}

/// Where the adapters' gradients of one layer go: `(dA, dB)` f32 pointers per projection.
pub type GradOut = [Option<(u64, u64)>; 7];

/// Recomputes layer `run` on `x` and writes the gradient of `x` into `dx` and the adapters'
/// gradients into `grads`, given the gradient `dy` of the layer's output.
pub fn backward(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, dy: u64, dx: u64, grads: &GradOut) -> Result<()> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let n = run.data.tokens();
    let w = run.weights;
    let a = &run.attn;
    let b = run.data;
    forward(cx, s, run, x, None)?;

    let dd = if run.sandwich {
        let post_ff = w.norm(3).expect("Gemma 2/3 post-feed-forward norm");
        cx.rms_norm_backward(e, p.d, post_ff, dy, None, p.dd, n, d.hidden, run.eps)?;
        p.dd
    } else {
        dy
    };
    project_backward(cx, s, run, 3, p.p, &[dd], p.dp, grads)?;
    cx.geglu_backward(e, p.dp, p.g, p.u, p.g, p.u, n * d.intermediate, run.erf)?;
    project_backward(cx, s, run, 2, p.m, &[p.g, p.u], p.dm, grads)?;
    let d_attn = if run.sandwich {
        let pre_ff = w.norm(2).expect("Gemma 2/3 pre-feed-forward norm");
        cx.rms_norm_backward(e, p.h, pre_ff, p.dm, Some(dy), p.dh, n, d.hidden, run.eps)?;
        let post_attn = w.norm(1).expect("post-attention norm");
        cx.rms_norm_backward(e, p.attn, post_attn, p.dh, None, p.dattn, n, d.hidden, run.eps)?;
        p.dattn
    } else {
        let post_attn = w.norm(1).expect("post-attention norm");
        cx.rms_norm_backward(e, p.h, post_attn, p.dm, Some(dy), p.dh, n, d.hidden, run.eps)?;
        p.dh
    };
    let io = attn_io(s, run);
    project_backward(cx, s, run, 1, io.o, &[d_attn], p.d_o, grads)?;
    cx.attention_backward(e, *a, io, p.d_o, p.dots, p.dkv_part, p.dq, p.dk, p.dv)?;
    let pos = b.positions.ptr;
    cx.rope_backward(
        e,
        p.dq,
        p.q_raw,
        p.dq_raw,
        w.norm(4),
        pos,
        run.inv_freq,
        n,
        a.heads,
        a.head_dim,
        run.eps,
    )?;
    cx.rope_backward(
        e,
        p.dk,
        p.k_raw,
        p.dk_raw,
        w.norm(5),
        pos,
        run.inv_freq,
        n,
        a.kv_heads,
        a.head_dim,
        run.eps,
    )?;
    project_backward(cx, s, run, 0, p.a, &[p.dq_raw, p.dk_raw, p.dv], p.da, grads)?;
    let input_norm = w.norm(0).expect("input norm");
    cx.rms_norm_backward(e, x, input_norm, p.da, Some(p.dh), dx, n, d.hidden, run.eps)
}

/// The attention's tensors; its output and logsumexp where the forward keeps them for the
/// backward, if it does.
fn attn_io(s: &Scratch, run: &LayerRun) -> AttnIo {
    let p = &s.ptrs;
    let (o, lse) = s.saved_attention(run.index).unwrap_or((p.o, p.lse));
    AttnIo {
        q: p.q,
        k: p.k,
        v: p.v,
        o,
        lse,
        segs: run.data.segments.ptr,
        stats: run.data.stats.ptr,
    }
}

/// The projections of group `g` of `input` into `outs` (one per member), adapters included;
/// the group's `x·Aᵀ` stays in `z[g]` for the backward. Each member's `z·(sB)ᵀ` is written
/// first and the base GEMM accumulates onto it: the thin GEMM then only writes the output
/// (it would read and write it after), and the base GEMM's extra read hides under its math.
fn project(cx: &mut Cuda, s: &Scratch, run: &LayerRun, g: usize, input: u64, outs: &[u64]) -> Result<()> {
    let (d, e) = (&s.dims, s.dims.elem);
    let n = run.data.tokens();
    let group = GROUPS[g];
    let in_features = shape(d, group[0]).1;
    let x = Mat::new(input, n, in_features, e);
    let adapted = project_adapters(cx, s, run, g, input, Some(outs))?;
    for (&p, &out) in group.iter().zip(outs) {
        let (out_features, _) = shape(d, p);
        let weight = Mat::new(run.weights.projections[p], out_features, in_features, e);
        let beta = if adapted.contains(&p) { 1.0 } else { 0.0 };
        cx.gemm(
            "gemm base",
            Mat::new(out, n, out_features, e),
            x,
            false,
            weight,
            true,
            1.0,
            beta,
        )?;
    }
    Ok(())
}

/// The adapters of group `g`: `z[g] = input·Aᵀ`, then, given the members' outputs `outs`,
/// `z·(sB)ᵀ` written into each. Returns the members whose output it wrote. A member with
/// dropout reads its own dropped-out copy of the input (PEFT draws a mask per adapter), so
/// the group's `x·Aᵀ` is then one GEMM per member.
fn project_adapters(
    cx: &mut Cuda,
    s: &Scratch,
    run: &LayerRun,
    g: usize,
    input: u64,
    outs: Option<&[u64]>,
) -> Result<Vec<usize>> {
    let (d, e) = (&s.dims, s.dims.elem);
    let n = run.data.tokens();
    let group = GROUPS[g];
    let in_features = shape(d, group[0]).1;
    let x = Mat::new(input, n, in_features, e);
    let Some(adapters) = run.adapters.group(run.index, group) else {
        return Ok(Vec::new());
    };
    let z = Mat::new(s.ptrs.z[g], n, adapters.rank, e);
    let a = Mat::new(adapters.a, adapters.rank, in_features, e);
    if adapters.members.iter().any(|&(p, _, _)| run.keep[p].is_some()) {
        for &(p, column, rank) in &adapters.members {
            let x = dropped_input(cx, s, run, p, x)?;
            cx.gemm(
                "gemm adapters x·Aᵀ",
                z.cols(column, rank),
                x,
                false,
                a.rows(column, rank),
                true,
                1.0,
                0.0,
            )?;
        }
    } else {
        cx.gemm("gemm adapters x·Aᵀ", z, x, false, a, true, 1.0, 0.0)?;
    }
    let Some(outs) = outs else {
        return Ok(Vec::new());
    };
    let mut written = Vec::new();
    for &(p, column, rank) in &adapters.members {
        let out = outs[group.iter().position(|&q| q == p).expect("a member")];
        let (out_features, _) = shape(d, p);
        let slot = run.adapters.layers[run.index][p].expect("a member has an adapter");
        let scaled_b = Mat::new(slot.b, out_features, rank, e);
        let out = Mat::new(out, n, out_features, e);
        cx.gemm(
            "gemm adapters z·Bᵀ",
            out,
            z.cols(column, rank),
            false,
            scaled_b,
            true,
            1.0,
            0.0,
        )?;
        written.push(p);
    }
    Ok(written)
}

/// Projection `p`'s adapter input: `x` itself, or with dropout `x · keep / keep_prob` in the
/// scratch's `dropped` buffer.
fn dropped_input(cx: &mut Cuda, s: &Scratch, run: &LayerRun, p: usize, x: Mat) -> Result<Mat> {
    let Some((keep, keep_prob)) = run.keep[p] else {
        return Ok(x);
    };
    let count = x.rows * x.cols;
    cx.dropout(x.elem, x.ptr, keep, s.ptrs.dropped, count, keep_prob, false)?;
    Ok(Mat::new(s.ptrs.dropped, x.rows, x.cols, x.elem))
}

/// The backward of [`project`]: `dx` from the members' output gradients `grads_out`, and each
/// adapter's `dA`, `dB` into `grads`. Without dropout the adapters' `dz·A` is written first
/// and the base GEMMs accumulate onto it (see [`project`]); with dropout each member's `dz·A`
/// goes through its mask onto the base GEMMs' `dx`.
#[allow(clippy::too_many_arguments)]
fn project_backward(
    cx: &mut Cuda,
    s: &Scratch,
    run: &LayerRun,
    g: usize,
    input: u64,
    grads_out: &[u64],
    dx: u64,
    grads: &GradOut,
) -> Result<()> {
    let (d, e) = (&s.dims, s.dims.elem);
    let n = run.data.tokens();
    let group = GROUPS[g];
    let in_features = shape(d, group[0]).1;
    let dx = Mat::new(dx, n, in_features, e);
    let x = Mat::new(input, n, in_features, e);
    let member_grad = |p: usize| {
        let (out_features, _) = shape(d, p);
        let grad = grads_out[group.iter().position(|&q| q == p).expect("a member")];
        Mat::new(grad, n, out_features, e)
    };
    let adapters = run.adapters.group(run.index, group);
    let dropout = adapters
        .as_ref()
        .is_some_and(|a| a.members.iter().any(|&(p, _, _)| run.keep[p].is_some()));
    let mut dx_written = false;
    if let Some(adapters) = &adapters {
        let dz = Mat::new(s.ptrs.dz[g], n, adapters.rank, e);
        for &(p, column, rank) in &adapters.members {
            let slot = run.adapters.layers[run.index][p].expect("a member has an adapter");
            let scaled_b = Mat::new(slot.b, shape(d, p).0, rank, e);
            cx.gemm(
                "gemm adapters dz",
                dz.cols(column, rank),
                member_grad(p),
                false,
                scaled_b,
                false,
                1.0,
                0.0,
            )?;
        }
        if !dropout {
            let a = Mat::new(adapters.a, adapters.rank, in_features, e);
            cx.gemm("gemm adapters dz·A", dx, dz, false, a, false, 1.0, 0.0)?;
            dx_written = true;
        }
    }
    for (i, (&p, &grad)) in group.iter().zip(grads_out).enumerate() {
        let (out_features, _) = shape(d, p);
        let weight = Mat::new(run.weights.projections[p], out_features, in_features, e);
        let beta = if dx_written || i > 0 { 1.0 } else { 0.0 };
        cx.gemm(
            "gemm base",
            dx,
            Mat::new(grad, n, out_features, e),
            false,
            weight,
            false,
            1.0,
            beta,
        )?;
    }
    let Some(adapters) = adapters else {
        return Ok(());
    };
    let dz = Mat::new(s.ptrs.dz[g], n, adapters.rank, e);
    let z = Mat::new(s.ptrs.z[g], n, adapters.rank, e);
    let a = Mat::new(adapters.a, adapters.rank, in_features, e);
    let d_a = Mat::new(s.ptrs.d_a, adapters.rank, in_features, Elem::F32);
    if dropout {
        for &(p, column, rank) in &adapters.members {
            let (dz, a) = (dz.cols(column, rank), a.rows(column, rank));
            match run.keep[p] {
                Some((keep, keep_prob)) => {
                    let t = Mat::new(s.ptrs.dropped_grad, n, in_features, e);
                    cx.gemm("gemm adapters dz·A", t, dz, false, a, false, 1.0, 0.0)?;
                    cx.dropout(e, t.ptr, keep, dx.ptr, n * in_features, keep_prob, true)?;
                }
                None => cx.gemm("gemm adapters dz·A", dx, dz, false, a, false, 1.0, 1.0)?,
            }
            let x = dropped_input(cx, s, run, p, x)?;
            cx.gemm("gemm adapters dA", d_a.rows(column, rank), dz, true, x, false, 1.0, 0.0)?;
        }
    } else {
        cx.gemm("gemm adapters dA", d_a, dz, true, x, false, 1.0, 0.0)?;
    }
    for &(p, column, rank) in &adapters.members {
        let Some((grad_a, grad_b)) = grads[p] else { continue };
        let rows = d_a.rows(column, rank);
        cx.gpu.copy(grad_a, rows.ptr, rank * in_features * 4)?;
        let slot = run.adapters.layers[run.index][p].expect("a member has an adapter");
        let out_b = Mat::new(grad_b, shape(d, p).0, rank, Elem::F32);
        cx.gemm(
            "gemm adapters dB",
            out_b,
            member_grad(p),
            true,
            z.cols(column, rank),
            false,
            slot.scale,
            0.0,
        )?;
    }
    Ok(())
}
