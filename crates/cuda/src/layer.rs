//! One decoder layer on the device: the forward and the backward for frozen base weights
//! (recomputing the forward from the layer's input) — the CUDA counterpart of
//! `DecoderLayer::forward_saving` and `DecoderLayer::backward`, checked against them. The MLP
//! runs in chunks of rows (a tiled MLP), so its `[tokens, intermediate]` activations never
//! exist whole.
//!
//! Each projection group (q/k/v, o, gate/up, down) is one base GEMM per member plus, with
//! adapters, one GEMM for the group's `x·Aᵀ` and one accumulating `z·(sB)ᵀ` into each member's
//! output. Backward: input gradients only through the frozen weights, `dA` for the whole group
//! in one GEMM, `dB` per adapter.

use burn::tensor::DType;
use ember_model::bnb::{FourBitFormat, QuantType, dynamic_map};
use ember_model::{Activation, DecoderLayer, FrozenWeight, GemmaForCausalLM, LayerType};

use crate::adapters::{Adapters, GATE, GROUPS, K, O, Q, UP, V, projections};
use crate::batch::{BatchData, BatchRows};
use crate::bridge::{CudaBackend, Held, Holds};
use crate::driver::Buffer;
use crate::error::{CudaError, Result};
use crate::gemm::{Elem, Mat};
use crate::ops::{AttnIo, AttnShape, Cuda, DecodeCache, FourBitPtrs};
use crate::scratch::{Dims, Scratch};

/// A layer's frozen tensors' pointers, valid while the micro-batch holds them.
#[derive(Clone)]
pub struct LayerWeights {
    /// input, post-attention, pre- and post-feed-forward (Gemma 2/3), q and k norms (Gemma 3).
    norms: [Option<u64>; 6],
    /// The dense projections; for a 4-bit layer, where [`ModelWeights::layer`] dequantizes them.
    projections: [u64; 7],
    /// The 4-bit (QLoRA) projections as stored.
    four_bit: [Option<FourBitPtrs>; 7],
}

impl LayerWeights {
    /// Every layer's weights, held in one trip (see [`Holds`]); the pointers are valid while
    /// the returned [`Held`]s live. 4-bit projections point at the `tables` (each type's 16
    /// values, then the dynamic map).
    fn hold_all(layers: &[DecoderLayer<CudaBackend>], tables: u64) -> Result<(Vec<Self>, Vec<Held>)> {
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
            let projections = projections(layer).map(|linear| match &linear.weight {
                FrozenWeight::Dense(weight) => Stored::Dense(holds.add(&weight.val())),
                FrozenWeight::FourBit(weight) => Stored::FourBit(
                    holds.add_int(&weight.codes.val()),
                    holds.add(&weight.absmax.val()),
                    weight.absmax_codes.as_ref().map(|c| holds.add_int(&c.val())),
                    weight.format,
                ),
            });
            slots.push((norms, projections));
        }
        let held = holds.hold()?;
        let weights = slots
            .into_iter()
            .map(|(norms, stored)| -> Result<Self> {
                let mut four_bit = [None; 7];
                for (slot, s) in four_bit.iter_mut().zip(stored) {
                    *slot = s.four_bit(&held, tables)?;
                }
                Ok(Self {
                    norms: norms.map(|i| i.map(|i| held[i].ptr)),
                    projections: stored.map(|s| match s {
                        Stored::Dense(i) => held[i].ptr,
                        Stored::FourBit(..) => 0,
                    }),
                    four_bit,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((weights, held))
    }

    fn norm(&self, i: usize) -> Option<u64> {
        self.norms[i]
    }

    /// Bytes of the layer's 4-bit projections dequantized to `elem`, each 16-byte aligned.
    fn dequantized_bytes(&self, elem: Elem) -> usize {
        self.four_bit
            .iter()
            .flatten()
            .map(|w| aligned(w.len * elem.size()))
            .sum()
    }
}

/// A projection's tensors by their index among the holds.
#[derive(Clone, Copy)]
enum Stored {
    Dense(usize),
    FourBit(usize, usize, Option<usize>, FourBitFormat),
}

impl Stored {
    /// The projection's 4-bit tensors, if it is 4-bit.
    fn four_bit(self, held: &[Held], tables: u64) -> Result<Option<FourBitPtrs>> {
        let Stored::FourBit(codes, absmax, absmax_codes, format) = self else {
            return Ok(None);
        };
        let state = match format.dtype {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
            other => {
                return Err(CudaError::Unsupported(format!(
                    "4-bit weights quantized from {other:?}"
                )));
            }
        };
        let table = match format.quant_type {
            QuantType::Nf4 => tables,
            QuantType::Fp4 => tables + 16 * 4,
        };
        Ok(Some(FourBitPtrs {
            packed: held[codes].ptr,
            absmax: held[absmax].ptr,
            absmax_codes: absmax_codes.map_or(0, |i| held[i].ptr),
            offset: format.offset.unwrap_or(0.0),
            table,
            map: tables + 32 * 4,
            blocksize: format.blocksize,
            len: format.shape[0] * format.shape[1],
            state,
        }))
    }
}

/// Every frozen tensor's pointer: each layer's, the final norm's, the LM head's (the tied
/// embedding or `lm_head`) and the embedding's, valid while this lives.
pub struct ModelWeights {
    pub layers: Vec<LayerWeights>,
    pub final_norm: u64,
    pub head: u64,
    pub embed: u64,
    /// With 4-bit layers: the 4-bit tables, and where one layer's projections are dequantized.
    four_bit: Option<(Buffer, u64)>,
    _held: Vec<Held>,
}

impl ModelWeights {
    /// The weights of `model`; a 4-bit model's layers are dequantized into `room`, grown to one
    /// layer's projections if smaller (the caller keeps it, and it must outlive these).
    pub fn hold(
        cuda: &Cuda,
        model: &GemmaForCausalLM<CudaBackend>,
        elem: Elem,
        room: &mut Option<Buffer>,
    ) -> Result<Self> {
        let tables: Vec<f32> = [QuantType::Nf4.table(), QuantType::Fp4.table()]
            .concat()
            .into_iter()
            .chain(dynamic_map(true))
            .collect();
        let table_buffer = Buffer::new(tables.len() * 4)?;
        cuda.gpu.upload(table_buffer.ptr, &tables)?;
        let (layers, mut held) = LayerWeights::hold_all(&model.model.layers, table_buffer.ptr)?;
        let largest = layers.iter().map(|l| l.dequantized_bytes(elem)).max().unwrap_or(0);
        let four_bit = if largest > 0 {
            if room.as_ref().is_none_or(|r| r.bytes < largest) {
                *room = None;
                *room = Some(Buffer::new(largest)?);
            }
            Some((table_buffer, room.as_ref().expect("made above").ptr))
        } else {
            None
        };
        let mut holds = Holds::default();
        holds.add(&model.model.norm.weight.val());
        let embed = model.model.embed_tokens.weight.val();
        holds.add(
            &model
                .lm_head
                .as_ref()
                .map_or_else(|| embed.clone(), |head| head.weight.val()),
        );
        holds.add(&embed);
        held.extend(holds.hold()?);
        let n = held.len();
        Ok(Self {
            layers,
            final_norm: held[n - 3].ptr,
            head: held[n - 2].ptr,
            embed: held[n - 1].ptr,
            four_bit,
            _held: held,
        })
    }

    /// Layer `index`'s weights as the kernels read them: a 4-bit layer's projections are
    /// dequantized into the one layer's room, valid until the next call.
    pub fn layer(&self, cuda: &mut Cuda, index: usize, elem: Elem) -> Result<LayerWeights> {
        let weights = &self.layers[index];
        let Some((_, room)) = self.four_bit else {
            return Ok(weights.clone());
        };
        let mut dense = weights.clone();
        let mut at = room;
        for (p, w) in weights.four_bit.iter().enumerate() {
            if let Some(w) = w {
                cuda.dequant4(elem, w, at)?;
                dense.projections[p] = at;
                at += aligned(w.len * elem.size()) as u64;
            }
        }
        Ok(dense)
    }
}

/// Each dequantized projection starts 16-byte aligned, for the kernels' wide accesses.
fn aligned(bytes: usize) -> usize {
    bytes.next_multiple_of(16)
}

/// Everything one layer's kernels need besides its input and output.
#[derive(Clone)]
pub struct LayerRun<'a> {
    pub index: usize,
    pub weights: &'a LayerWeights,
    pub adapters: &'a Adapters,
    /// The rows of the micro-batch the kernels run on: all of it, or one pass's.
    pub data: BatchRows,
    pub attn: AttnShape,
    pub inv_freq: u64,
    /// Gemma 2/3's four norms around attention and MLP.
    pub sandwich: bool,
    pub erf: bool,
    pub eps: f32,
    /// Each projection's LoRA dropout mask (f32 `[tokens, in]` of 0/1) and keep probability.
    pub keep: [Option<(u64, f32)>; 7],
    /// Generation: the layer's KV caches (keys and values after RoPE and Gemma 3's key norm),
    /// which this run's keys and values extend, each token at its position in its sequence's
    /// cache, and which its attention reads; `None` in training.
    pub cache: Option<DecodeCache>,
}

impl<'a> LayerRun<'a> {
    #[allow(clippy::too_many_arguments)]
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
            data: data.all(),
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
                data.inv_freq_sliding
            } else {
                data.inv_freq_full
            },
            sandwich: layer.pre_feedforward_layernorm.is_some(),
            erf: layer.mlp.activation == Activation::GeluErf,
            eps: eps as f32,
            keep,
            cache: None,
        }
    }

    /// This run in passes of whole rows that fit the scratch's buffers, each with its rows'
    /// token layout and dropout masks, and the token offset of its first row.
    fn passes(&self, dims: &Dims) -> Vec<(LayerRun<'a>, usize)> {
        self.data
            .passes(dims.pass_tokens)
            .map(|rows| {
                let mut pass = self.clone();
                pass.data = rows;
                pass.attn.batch = rows.batch;
                let skip = rows.offset - self.data.offset;
                for (p, keep) in pass.keep.iter_mut().enumerate() {
                    if let Some((mask, _)) = keep {
                        *mask += (skip * shape(dims, p).1 * 4) as u64;
                    }
                }
                (pass, skip)
            })
            .collect()
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

/// Rows `start..start + len` of a pass's tokens, and whether they hold the micro-batch's
/// first or last token: where the adapters' gradients start, and where they are complete.
#[derive(Debug, Clone, Copy)]
struct Rows {
    start: usize,
    len: usize,
    first: bool,
    last: bool,
}

impl Rows {
    /// All of the pass's rows.
    fn all(pass: &BatchRows) -> Self {
        Self {
            start: 0,
            len: pass.tokens(),
            first: pass.first,
            last: pass.last,
        }
    }

    /// The pass's rows in chunks of at most `size`.
    fn chunks(pass: &BatchRows, size: usize) -> impl Iterator<Item = Rows> {
        let (total, first, last) = (pass.tokens(), pass.first, pass.last);
        (0..total).step_by(size.max(1)).map(move |start| {
            let len = size.min(total - start);
            Rows {
                start,
                len,
                first: first && start == 0,
                last: last && start + len == total,
            }
        })
    }

    /// `ptr` advanced to the first of these rows, rows being `row_bytes` apart.
    fn at(&self, ptr: u64, row_bytes: usize) -> u64 {
        ptr + (self.start * row_bytes) as u64
    }
}

/// Runs layer `run` on `x` (`[tokens, hidden]`), writing `y`, a pass of rows at a time
/// ([`Dims::pass_tokens`]); activations stay in `scratch`. The MLP runs in chunks of rows
/// ([`Dims::mlp_rows`]), so only one chunk's `[rows, intermediate]` activations exist at a
/// time.
pub fn forward(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, y: u64) -> Result<()> {
    let row = s.dims.hidden * s.dims.elem.size();
    for (pass, skip) in run.passes(&s.dims) {
        let at = |ptr: u64| ptr + (skip * row) as u64;
        forward_pass(cx, s, &pass, at(x), at(y))?;
    }
    Ok(())
}

fn forward_pass(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, y: u64) -> Result<()> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let n = run.data.tokens();
    attention_block(cx, s, run, x, true)?;
    for rows in Rows::chunks(&run.data, d.mlp_rows) {
        mlp_forward(cx, s, run, rows, true)?;
    }
    let post_ff = if run.sandwich { run.weights.norm(3) } else { None };
    cx.residual_norm(e, p.h, p.d, post_ff, None, y, None, n, d.hidden, run.eps)
}

/// From the layer's input `x` to the MLP's input: the input norm, q/k/v with RoPE, attention,
/// the output projection and the residual with its norms, leaving the residual stream in `h`
/// and the MLP's input in `m`. `attend` false (the backward's recompute) skips the attention
/// when the forward kept its output ([`Scratch::saved_attention`]).
fn attention_block(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, attend: bool) -> Result<()> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let n = run.data.tokens();
    let all = Rows::all(&run.data);
    let w = run.weights;
    let a = &run.attn;
    cx.rms_norm(e, x, w.norm(0).expect("input norm"), p.a, n, d.hidden, run.eps)?;
    project(cx, s, run, 0, p.a, &[p.q_raw, p.k_raw, p.v], all)?;
    let b = run.data;
    cx.rope(
        e,
        p.q_raw,
        p.q,
        w.norm(4),
        b.positions,
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
        b.positions,
        run.inv_freq,
        n,
        a.kv_heads,
        a.head_dim,
        run.eps,
    )?;
    let io = attn_io(s, run);
    match run.cache {
        Some(cache) => {
            cx.kv_append(e, p.k, p.v, cache, n, a.kv_heads * a.head_dim)?;
            cx.attention_decode(e, *a, p.q, cache, io.o)?;
        }
        None if attend || s.saved_attention(run.index).is_none() => cx.attention_forward(e, *a, io)?,
        None => {}
    }
    project(cx, s, run, 1, io.o, &[p.attn], all)?;
    let (post_attn, next) = if run.sandwich {
        (w.norm(1), w.norm(2))
    } else {
        (None, w.norm(1))
    };
    cx.residual_norm(e, x, p.attn, post_attn, next, p.h, Some(p.m), n, d.hidden, run.eps)
}

/// The MLP on `rows` of `m`: gate/up and GeGLU into the chunk buffers `g`, `u`, `p`, then the
/// down projection into those rows of `d` — or, without `down` (the backward's recompute
/// under Gemma 1's single post-attention norm, which never reads `d`), only the down
/// adapter's `x·Aᵀ`, which its `dB` reads.
fn mlp_forward(cx: &mut Cuda, s: &Scratch, run: &LayerRun, rows: Rows, down: bool) -> Result<()> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let row = d.hidden * e.size();
    project(cx, s, run, 2, rows.at(p.m, row), &[p.g, p.u], rows)?;
    cx.geglu(e, p.g, p.u, p.p, rows.len * d.intermediate, run.erf)?;
    if down {
        project(cx, s, run, 3, p.p, &[rows.at(p.d, row)], rows)
    } else {
        project_adapters(cx, s, run, 3, p.p, None, rows).map(drop)
    }
}

/// Where the adapters' gradients of one layer go: `(dA, dB)` f32 pointers per projection.
pub type GradOut = [Option<(u64, u64)>; 7];

/// Recomputes layer `run` on `x` and writes the gradient of `x` into `dx` and the adapters'
/// gradients into `grads`, given the gradient `dy` of the layer's output, a pass of rows at a
/// time. The MLP's recompute and backward run chunk by chunk, the adapters' gradients adding
/// up over the chunks and the passes.
pub fn backward(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, dy: u64, dx: u64, grads: &GradOut) -> Result<()> {
    let row = s.dims.hidden * s.dims.elem.size();
    for (pass, skip) in run.passes(&s.dims) {
        let at = |ptr: u64| ptr + (skip * row) as u64;
        backward_pass(cx, s, &pass, at(x), at(dy), at(dx), grads)?;
    }
    Ok(())
}

fn backward_pass(cx: &mut Cuda, s: &Scratch, run: &LayerRun, x: u64, dy: u64, dx: u64, grads: &GradOut) -> Result<()> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let n = run.data.tokens();
    let w = run.weights;
    let a = &run.attn;
    let b = run.data;
    attention_block(cx, s, run, x, false)?;

    let row = d.hidden * e.size();
    for rows in Rows::chunks(&run.data, d.mlp_rows) {
        // The post-feed-forward norm's backward reads the down projection's output.
        mlp_forward(cx, s, run, rows, run.sandwich)?;
        let dd = if run.sandwich {
            let post_ff = w.norm(3).expect("Gemma 2/3 post-feed-forward norm");
            let (d_rows, dd) = (rows.at(p.d, row), rows.at(p.dd, row));
            cx.rms_norm_backward(
                e,
                d_rows,
                post_ff,
                rows.at(dy, row),
                None,
                dd,
                rows.len,
                d.hidden,
                run.eps,
            )?;
            dd
        } else {
            rows.at(dy, row)
        };
        project_backward(cx, s, run, 3, p.p, &[dd], p.dp, grads, rows)?;
        cx.geglu_backward(e, p.dp, p.g, p.u, p.g, p.u, rows.len * d.intermediate, run.erf)?;
        project_backward(
            cx,
            s,
            run,
            2,
            rows.at(p.m, row),
            &[p.g, p.u],
            rows.at(p.dm, row),
            grads,
            rows,
        )?;
    }
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
    let all = Rows::all(&run.data);
    let io = attn_io(s, run);
    project_backward(cx, s, run, 1, io.o, &[d_attn], p.d_o, grads, all)?;
    cx.attention_backward(e, *a, io, p.d_o, p.dots, p.dkv_part, p.dq, p.dk, p.dv)?;
    let pos = b.positions;
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
    project_backward(cx, s, run, 0, p.a, &[p.dq_raw, p.dk_raw, p.dv], p.da, grads, all)?;
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
        segs: run.data.segments,
        stats: run.data.stats,
    }
}

/// The projections of group `g` of `input` (`rows` of the micro-batch) into `outs` (one per
/// member), adapters included; the group's `x·Aᵀ` stays in those rows of `z[g]` for the
/// backward. Each member's `z·(sB)ᵀ` is written
/// first and the base GEMM accumulates onto it: the thin GEMM then only writes the output
/// (it would read and write it after), and the base GEMM's extra read hides under its math.
fn project(cx: &mut Cuda, s: &Scratch, run: &LayerRun, g: usize, input: u64, outs: &[u64], rows: Rows) -> Result<()> {
    let (d, e) = (&s.dims, s.dims.elem);
    let n = rows.len;
    let group = GROUPS[g];
    let in_features = shape(d, group[0]).1;
    let x = Mat::new(input, n, in_features, e);
    let adapted = project_adapters(cx, s, run, g, input, Some(outs), rows)?;
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
    rows: Rows,
) -> Result<Vec<usize>> {
    let (d, e) = (&s.dims, s.dims.elem);
    let n = rows.len;
    let group = GROUPS[g];
    let in_features = shape(d, group[0]).1;
    let x = Mat::new(input, n, in_features, e);
    let Some(adapters) = run.adapters.group(run.index, group) else {
        return Ok(Vec::new());
    };
    let z = Mat::new(rows.at(s.ptrs.z[g], adapters.rank * e.size()), n, adapters.rank, e);
    let a = Mat::new(adapters.a, adapters.rank, in_features, e);
    if adapters.members.iter().any(|&(p, _, _)| run.keep[p].is_some()) {
        for &(p, column, rank) in &adapters.members {
            let x = dropped_input(cx, s, run, p, x, rows)?;
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

/// Projection `p`'s adapter input `x` (`rows` of the micro-batch): `x` itself, or with dropout
/// `x · keep / keep_prob` (those rows of the mask) in the scratch's `dropped` buffer.
fn dropped_input(cx: &mut Cuda, s: &Scratch, run: &LayerRun, p: usize, x: Mat, rows: Rows) -> Result<Mat> {
    let Some((keep, keep_prob)) = run.keep[p] else {
        return Ok(x);
    };
    let count = x.rows * x.cols;
    let keep = rows.at(keep, x.cols * 4);
    cx.dropout(x.elem, x.ptr, keep, s.ptrs.dropped, count, keep_prob, false)?;
    Ok(Mat::new(s.ptrs.dropped, x.rows, x.cols, x.elem))
}

/// The backward of [`project`] on `rows`: `dx` from the members' output gradients `grads_out`,
/// and each adapter's `dA`, `dB` into `grads`, added to what earlier chunks of rows left there
/// (`dA` adds up in the scratch and is copied out with the last chunk). `dA` reads the input
/// before `dx` is written, so `dx` may take the input's buffer (the down projection's does).
/// Without dropout the adapters' `dz·A` is written first and the base GEMMs accumulate onto it
/// (see [`project`]); with dropout each member's `dz·A` goes through its mask onto the base
/// GEMMs' `dx`.
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
    rows: Rows,
) -> Result<()> {
    let (d, e) = (&s.dims, s.dims.elem);
    let n = rows.len;
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
    let add = if rows.first { 0.0 } else { 1.0 };
    let d_a = Mat::new(
        s.ptrs.d_a[g],
        adapters.as_ref().map_or(0, |a| a.rank),
        in_features,
        Elem::F32,
    );
    let mut dx_written = false;
    if let Some(adapters) = &adapters {
        let dz = Mat::new(rows.at(s.ptrs.dz[g], adapters.rank * e.size()), n, adapters.rank, e);
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
        if dropout {
            for &(p, column, rank) in &adapters.members {
                let x = dropped_input(cx, s, run, p, x, rows)?;
                cx.gemm(
                    "gemm adapters dA",
                    d_a.rows(column, rank),
                    dz.cols(column, rank),
                    true,
                    x,
                    false,
                    1.0,
                    add,
                )?;
            }
        } else {
            cx.gemm("gemm adapters dA", d_a, dz, true, x, false, 1.0, add)?;
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
    let rank_row = adapters.rank * e.size();
    let dz = Mat::new(rows.at(s.ptrs.dz[g], rank_row), n, adapters.rank, e);
    let z = Mat::new(rows.at(s.ptrs.z[g], rank_row), n, adapters.rank, e);
    let a = Mat::new(adapters.a, adapters.rank, in_features, e);
    if dropout {
        for &(p, column, rank) in &adapters.members {
            let (dz, a) = (dz.cols(column, rank), a.rows(column, rank));
            match run.keep[p] {
                Some((keep, keep_prob)) => {
                    let t = Mat::new(s.ptrs.dropped_grad, n, in_features, e);
                    cx.gemm("gemm adapters dz·A", t, dz, false, a, false, 1.0, 0.0)?;
                    let keep = rows.at(keep, in_features * 4);
                    cx.dropout(e, t.ptr, keep, dx.ptr, n * in_features, keep_prob, true)?;
                }
                None => cx.gemm("gemm adapters dz·A", dx, dz, false, a, false, 1.0, 1.0)?,
            }
        }
    }
    for &(p, column, rank) in &adapters.members {
        let Some((grad_a, grad_b)) = grads[p] else { continue };
        if rows.last {
            let member = d_a.rows(column, rank);
            cx.gpu.copy(grad_a, member.ptr, rank * in_features * 4)?;
        }
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
            add,
        )?;
    }
    Ok(())
}
