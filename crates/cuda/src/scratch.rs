//! Ember's own device memory for one layer's recompute and backward and for the LM head: one
//! allocation, carved into named buffers, kept between layers and steps and regrown only when
//! a micro-batch has more tokens than any before.

use ember_model::GemmaConfig;
use ember_trainer::kernels::Favour;

use crate::driver::Buffer;
use crate::error::Result;
use crate::gemm::Elem;

/// Sizes a scratch layout depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Tokens of a micro-batch.
    pub tokens: usize,
    /// Tokens of one pass of a layer's kernels: the layer's buffers have room for this many
    /// (whole rows of the micro-batch, see [`crate::batch::BatchData::passes`]).
    pub pass_tokens: usize,
    pub hidden: usize,
    /// `heads · head_dim`, `kv_heads · head_dim`.
    pub q: usize,
    pub kv: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    /// Largest total adapter rank of each projection group over the layers.
    pub ranks: [usize; 4],
    /// Rows of one LM-head chunk, and the vocabulary.
    pub head_rows: usize,
    /// Rows of one MLP chunk: the `[rows, intermediate]` activations exist for one chunk at a
    /// time (the tiled MLP), not for every token.
    pub mlp_rows: usize,
    pub vocab: usize,
    pub elem: Elem,
    /// Some adapter has LoRA dropout: the `dropped` buffers exist.
    pub dropout: bool,
    /// Each layer's attention output is kept from its forward to its backward.
    pub save_attention: bool,
}

impl Dims {
    /// The layout for micro-batches of `batch` rows of `seq` tokens. Favouring memory, the
    /// MLP's chunks are a quarter of the size, a layer runs in passes of whole rows ([`pass_tokens`]:
    /// its buffers sized for one pass, not the micro-batch), and no attention
    /// output is kept (the backward's recompute runs the attention forward again). The LM
    /// head's chunk stays: at a quarter of the rows its GEMMs ran at a third of the speed (247
    /// against 747 TFLOP/s at Gemma-2B's shape, H200).
    pub fn new(
        config: &GemmaConfig,
        batch: usize,
        seq: usize,
        ranks: [usize; 4],
        elem: Elem,
        dropout: bool,
        favour: Favour,
    ) -> Self {
        let share = match favour {
            Favour::Speed => 1,
            Favour::Memory => 4,
        };
        // A chunk of logits takes at most ~128 MiB (Gemma's vocabulary is 256k): 256 rows in
        // bf16 still keep the head's GEMMs at full speed, and larger chunks only cost memory.
        let tokens = batch * seq;
        let head_rows = ((128usize << 20) / (config.vocab_size * elem.size())).clamp(16, tokens.max(16));
        let mlp_rows = mlp_rows(config.intermediate_size * elem.size() * share);
        let pass_tokens = match favour {
            Favour::Speed => tokens,
            Favour::Memory => pass_tokens(config, seq, mlp_rows).min(tokens),
        }
        .max(1);
        Self {
            tokens,
            pass_tokens,
            hidden: config.hidden_size,
            q: config.num_attention_heads * config.head_dim,
            kv: config.num_key_value_heads * config.head_dim,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            layers: config.num_hidden_layers(),
            ranks,
            head_rows,
            mlp_rows: mlp_rows.min(pass_tokens),
            vocab: config.vocab_size,
            elem,
            dropout,
            save_attention: favour == Favour::Speed,
        }
    }
}

impl Dims {
    /// Whether a scratch laid out for `self` serves `other`: the same model, at least as
    /// many tokens and adapter ranks.
    pub fn covers(&self, other: &Dims) -> bool {
        let same_model = (
            self.hidden,
            self.q,
            self.kv,
            self.intermediate,
            self.heads,
            self.layers,
            self.vocab,
            self.elem,
        ) == (
            other.hidden,
            other.q,
            other.kv,
            other.intermediate,
            other.heads,
            other.layers,
            other.vocab,
            other.elem,
        );
        same_model
            && self.tokens >= other.tokens
            && self.pass_tokens >= other.pass_tokens
            && self.mlp_rows >= other.mlp_rows
            && self.ranks.iter().zip(other.ranks).all(|(a, b)| *a >= b)
            && self.dropout >= other.dropout
            && self.save_attention >= other.save_attention
    }
}

/// A chunk of MLP activations takes up to 256 MiB a buffer (8,192 rows at Gemma-2B's 16,384 in
/// bf16): at the usual batch shapes the MLP runs whole, and at long contexts its activations
/// stop growing with the sequence. Smaller chunks cost speed: at 1,024 rows a Gemma-2B step
/// of 8 × 1,024 tokens took 7% longer (the adapters' thin GEMMs ran eight times as often) for
/// 0.9 GiB less. `EMBER_CUDA_MLP_ROWS` sets the rows instead (tests use it to make small
/// batches take several chunks).
fn mlp_rows(row_bytes: usize) -> usize {
    std::env::var("EMBER_CUDA_MLP_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or((256usize << 20) / row_bytes)
        .max(1)
}

/// Attention blocks a pass should give its kernels: two waves of the forward's on an H100 or
/// H200 (132 SMs, two blocks each). With fewer, the longest causal tiles run beside idle SMs:
/// Gemma-2B's attention took 55 instead of 38 ms a step in passes of two rows of 1,024.
const ATTENTION_BLOCKS: usize = 512;

/// Tokens of a pass favouring memory: whole rows of `seq` tokens, enough for an MLP chunk of
/// `mlp_rows` and for [`ATTENTION_BLOCKS`] attention blocks (64 queries of a head each).
/// `EMBER_CUDA_PASS_TOKENS` sets the target instead (measurements).
fn pass_tokens(config: &GemmaConfig, seq: usize, mlp_rows: usize) -> usize {
    let seq = seq.max(1);
    let target = std::env::var("EMBER_CUDA_PASS_TOKENS")
        .ok()
        .and_then(|tokens| tokens.parse().ok())
        .unwrap_or_else(|| {
            let row_blocks = seq.div_ceil(64) * config.num_attention_heads;
            mlp_rows.max(ATTENTION_BLOCKS.div_ceil(row_blocks) * seq)
        });
    (target / seq).max(1) * seq
}

/// Device pointers of the named buffers (see [`Scratch::new`] for their shapes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ptrs {
    // Forward activations of one layer.
    pub a: u64,
    pub q_raw: u64,
    pub q: u64,
    pub k_raw: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub lse: u64,
    pub attn: u64,
    pub h: u64,
    pub m: u64,
    pub g: u64,
    pub u: u64,
    pub p: u64,
    pub d: u64,
    pub z: [u64; 4],
    // Backward.
    pub dd: u64,
    /// Shares `p`'s buffer.
    pub dp: u64,
    pub dm: u64,
    pub dh: u64,
    pub dattn: u64,
    pub d_o: u64,
    pub dots: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    /// f32 partial dK, dV of the attention backward's head shares (grouped heads only).
    pub dkv_part: u64,
    pub dq_raw: u64,
    pub dk_raw: u64,
    pub da: u64,
    pub dz: [u64; 4],
    /// f32 gradient of each group's concatenated A (the MLP's accumulate over its chunks).
    pub d_a: [u64; 4],
    /// With LoRA dropout: one adapter's dropped-out input, and its `dz·A` before the mask.
    pub dropped: u64,
    pub dropped_grad: u64,
    // LM head.
    pub head_normed: u64,
    pub logits: u64,
    pub head_grad: u64,
    pub losses: u64,
    /// Every layer's attention output and logsumexp from the forward, `saved_stride` bytes
    /// apart, for the backward (stride 0: none; the backward's recompute runs the attention).
    pub saved_attn: u64,
    pub saved_stride: u64,
}

/// Keeping each layer's attention output between its forward and backward saves the
/// recompute's attention forward (~5% of a step at the 2B shape); above this many bytes (long
/// contexts) memory matters more and the recompute runs it.
const SAVED_ATTENTION_LIMIT: usize = 2 << 30;

pub struct Scratch {
    pub dims: Dims,
    pub ptrs: Ptrs,
    arena: Buffer,
}

/// Each named buffer's offset in the arena, and the arena's size.
fn layout(dims: Dims) -> (Ptrs, usize) {
    let Dims {
        tokens,
        pass_tokens: n,
        hidden: h,
        q,
        kv,
        intermediate: i,
        heads,
        layers,
        ranks,
        head_rows,
        mlp_rows: rows,
        vocab,
        elem,
        dropout,
        save_attention,
    } = dims;
    // Input features of each projection group, and the largest input an adapter reads at
    // once (whole rows for attention, one chunk for the MLP).
    let group_in = [h, q, h, i];
    let adapter_input = (n * h.max(q)).max(rows * i);
    let t = elem.size();
    // A layer's buffers and the LM head's share the arena: the head runs between layers, and
    // a layer's backward recomputes all it reads but the kept attention outputs (kept apart).
    // Within a layer, the MLP's chunk buffers and the attention backward's share too: the
    // backward's MLP loop is over before the attention backward writes its first.
    let mut layer = Cursor::default();
    let mut head = Cursor::default();
    let mut take = |bytes: usize| layer.take(bytes);
    let (a, q_raw, q_buf, k_raw, k, v, o) = (
        take(n * h * t),
        take(n * q * t),
        take(n * q * t),
        take(n * kv * t),
        take(n * kv * t),
        take(n * kv * t),
        take(n * q * t),
    );
    let (lse, attn, h_buf, m, d) = (
        take(heads * n * 4),
        take(n * h * t),
        take(n * h * t),
        take(n * h * t),
        take(n * h * t),
    );
    let z = ranks.map(|r| take(n * r * t));
    let (dd, dm) = (take(n * h * t), take(n * h * t));
    let dz = ranks.map(|r| take(n * r * t));
    let d_a = [0, 1, 2, 3].map(|g| take(ranks[g] * group_in[g] * 4));
    let dropped = take(if dropout { adapter_input * t } else { 0 });
    let dropped_grad = take(if dropout { adapter_input * t } else { 0 });
    let mut mlp = Cursor { end: layer.end };
    let mut back = Cursor { end: layer.end };
    let mut p = Ptrs {
        a,
        q_raw,
        q: q_buf,
        k_raw,
        k,
        v,
        o,
        lse,
        attn,
        h: h_buf,
        m,
        g: mlp.take(rows * i * t),
        u: mlp.take(rows * i * t),
        p: mlp.take(rows * i * t),
        d,
        z,
        dd,
        dp: 0,
        dm,
        dh: back.take(n * h * t),
        dattn: back.take(n * h * t),
        d_o: back.take(n * q * t),
        dots: back.take(heads * n * 4),
        dq: back.take(n * q * t),
        dk: back.take(n * kv * t),
        dv: back.take(n * kv * t),
        dkv_part: back.take(if q > kv { n * q * 8 } else { 0 }),
        dq_raw: back.take(n * q * t),
        dk_raw: back.take(n * kv * t),
        da: back.take(n * h * t),
        dz,
        d_a,
        dropped,
        dropped_grad,
        head_normed: head.take(head_rows * h * t),
        logits: head.take(head_rows * vocab * t),
        head_grad: head.take(head_rows * h * t),
        losses: head.take(tokens * 4),
        saved_attn: 0,
        saved_stride: 0,
    };
    // The down projection's input gradient overwrites its input, once its dA has read it.
    p.dp = p.p;
    let mut rest = Cursor {
        end: mlp.end.max(back.end).max(head.end),
    };
    let stride = (n * q * t).next_multiple_of(256) + (heads * n * 4).next_multiple_of(256);
    if save_attention && layers * stride <= SAVED_ATTENTION_LIMIT {
        p.saved_attn = rest.take(layers * stride);
        p.saved_stride = stride as u64;
    }
    (p, rest.end)
}

/// The end of the buffers laid out so far; each starts 256-byte aligned.
#[derive(Default)]
struct Cursor {
    end: usize,
}

impl Cursor {
    fn take(&mut self, bytes: usize) -> u64 {
        let offset = self.end.next_multiple_of(256);
        self.end = offset + bytes;
        offset as u64
    }
}

impl Scratch {
    pub fn new(dims: Dims) -> Result<Self> {
        let (mut p, bytes) = layout(dims);
        let arena = Buffer::new(bytes)?;
        let base = arena.ptr;
        let shift = |x: &mut u64| *x += base;
        for x in [
            &mut p.a,
            &mut p.q_raw,
            &mut p.q,
            &mut p.k_raw,
            &mut p.k,
            &mut p.v,
            &mut p.o,
            &mut p.lse,
            &mut p.attn,
            &mut p.h,
            &mut p.m,
            &mut p.g,
            &mut p.u,
            &mut p.p,
            &mut p.d,
            &mut p.dd,
            &mut p.dp,
            &mut p.dm,
            &mut p.dh,
            &mut p.dattn,
            &mut p.d_o,
            &mut p.dots,
            &mut p.dq,
            &mut p.dk,
            &mut p.dv,
            &mut p.dkv_part,
            &mut p.dq_raw,
            &mut p.dk_raw,
            &mut p.da,
            &mut p.dropped,
            &mut p.dropped_grad,
            &mut p.head_normed,
            &mut p.logits,
            &mut p.head_grad,
            &mut p.losses,
            &mut p.saved_attn,
        ] {
            shift(x);
        }
        for x in p.z.iter_mut().chain(p.dz.iter_mut()).chain(p.d_a.iter_mut()) {
            shift(x);
        }
        Ok(Self { dims, ptrs: p, arena })
    }

    /// The bytes a scratch for `dims` allocates.
    pub fn bytes_for(dims: Dims) -> usize {
        layout(dims).1
    }

    /// Where layer `layer`'s attention output `[tokens, heads·head_dim]` and logsumexp
    /// `[heads, tokens]` are kept from its forward to its backward, if they are.
    pub fn saved_attention(&self, layer: usize) -> Option<(u64, u64)> {
        let p = &self.ptrs;
        (p.saved_stride > 0).then(|| {
            let o = p.saved_attn + layer as u64 * p.saved_stride;
            (
                o,
                o + (self.dims.pass_tokens * self.dims.q * self.dims.elem.size()).next_multiple_of(256) as u64,
            )
        })
    }

    pub fn bytes(&self) -> usize {
        self.arena.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ember_model::GemmaConfig;
    use ember_trainer::kernels::Favour;

    use super::{Dims, layout};
    use crate::gemm::Elem;

    fn gemma_2b() -> GemmaConfig {
        let json = r#"{"model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048,
            "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8,
            "num_key_value_heads": 1, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}"#;
        GemmaConfig::parse(json, Path::new("gemma-2b")).expect("a valid config")
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn favouring_memory_sizes_a_layer_for_one_pass_of_rows() {
        let config = gemma_2b();
        let ranks = [48, 16, 32, 16];
        let speed = Dims::new(&config, 8, 1024, ranks, Elem::Bf16, false, Favour::Speed);
        let memory = Dims::new(&config, 8, 1024, ranks, Elem::Bf16, false, Favour::Memory);
        assert_eq!((speed.pass_tokens, speed.mlp_rows), (8192, 8192));
        // Four rows of 1,024 a pass (512 attention blocks of 64 queries of a head), the MLP
        // in two chunks of 2,048 rows.
        assert_eq!((memory.pass_tokens, memory.mlp_rows), (4096, 2048));
        let (speed_bytes, memory_bytes) = (layout(speed).1, layout(memory).1);
        assert!(memory_bytes < 560 * MIB, "{} MiB", memory_bytes / MIB);
        assert!(speed_bytes > 2 * memory_bytes, "{} MiB", speed_bytes / MIB);
        // A row longer than a pass's share is a pass of its own.
        let long = Dims::new(&config, 1, 16384, ranks, Elem::Bf16, false, Favour::Memory);
        assert_eq!((long.pass_tokens, long.mlp_rows), (16384, 2048));
        assert!(speed.covers(&memory) && !memory.covers(&speed) && !memory.covers(&long));
    }

    #[test]
    fn the_lm_head_shares_the_layer_buffers() {
        let config = gemma_2b();
        let dims = Dims::new(&config, 8, 1024, [48, 16, 32, 16], Elem::Bf16, false, Favour::Memory);
        let (p, bytes) = layout(dims);
        // The head's chunk of logits (~128 MiB) starts the arena again, under the layer's buffers.
        assert_eq!(p.head_normed, 0);
        assert!(p.logits < p.g && bytes >= p.losses as usize + dims.tokens * 4);
        assert_eq!(p.saved_stride, 0);
        // The attention backward's buffers start where the MLP's chunk buffers do.
        assert_eq!(p.dh, p.g);
        assert!(p.da > p.p && p.dm < p.g && p.d_a[3] < p.g);
    }
}
