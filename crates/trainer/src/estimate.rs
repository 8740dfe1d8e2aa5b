//! What a training run will hold on the device, from its settings alone: printed before the
//! weights load, and what `offload_activations = "auto"` and the fit check decide on.
//!
//! Counted: the frozen weights, the adapters with their gradients and optimizer state, the
//! layer inputs checkpointing keeps, the kernels' own buffers for one micro-batch (one layer's
//! recompute and backward, an LM-head chunk) and the runtime's fixed cost (on CUDA the
//! context and cuBLAS). Not counted: allocator slack and fragmentation, which the kernels keep
//! small on CUDA (exact-size allocations) and which burn's fused backends decide alone.

use std::fmt;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_lora::{LoraConfig, Resolver};
use ember_model::{Family, GemmaConfig};

use crate::config::{Offload, OptimKind, RunConfig};
use crate::error::{Result, TrainError};
use crate::kernels::{Favour, TrainKernels};

/// Device bytes of a run, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// Adapter parameters (f32), their gradients and the optimizer's state.
    pub adapters: u64,
    /// Layer inputs kept from the forward to the backward (two in flight when offloaded).
    pub saved_inputs: u64,
    /// The kernels' buffers for one micro-batch.
    pub step: u64,
    pub runtime: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.adapters + self.saved_inputs + self.step + self.runtime
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{:.2} GiB (weights {:.2}, adapters and optimizer {:.2}, saved layer inputs {:.2}, \
             step buffers {:.2}, runtime {:.2})",
            gib(self.total()),
            gib(self.weights),
            gib(self.adapters),
            gib(self.saved_inputs),
            gib(self.step),
            gib(self.runtime)
        )
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub offload: bool,
    pub estimate: MemoryEstimate,
}

/// How a run of `config` on `model` will use the device: whether the layer inputs are
/// offloaded (`offload_activations`; `"auto"` decides by the estimate against the device's free
/// memory) and the estimate then. An error where the kernels can tell what is free and the run
/// would not fit, before anything is loaded.
pub fn plan<B: Backend>(
    config: &RunConfig,
    model: &GemmaConfig,
    device: &B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B>,
) -> Result<Plan> {
    let args = &config.training;
    let four_bit = config.model.four_bit(Some(dtype), &config.file)?;
    let seq = config
        .data
        .max_seq_length
        .next_multiple_of(args.pad_to_multiple_of.max(1));
    let needs = |offload| {
        let run = RunShape {
            batch: args.per_device_train_batch_size,
            seq,
            optim: args.optim,
            checkpointing: args.gradient_checkpointing,
            offload,
            four_bit: four_bit.as_ref().map(|c| FourBitShape {
                double_quant: c.double_quant,
            }),
        };
        estimate(model, &config.lora, run, dtype, kernels)
    };
    let free = kernels.free_bytes(device);
    let offload = args.gradient_checkpointing
        && match args.offload_activations {
            Offload::On => true,
            Offload::Off => false,
            Offload::Auto => free.is_some_and(|free| needs(false).is_ok_and(|e| e.total() > free)),
        };
    let needed = needs(offload)?;
    match free {
        Some(free) if needed.total() > free => Err(TrainError::DoesNotFit {
            needed,
            free: free as f64 / (1u64 << 30) as f64,
        }),
        _ => Ok(Plan {
            offload,
            estimate: needed,
        }),
    }
}

/// The settings of a run the estimate depends on besides the model and the adapters.
#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    /// Samples per micro-batch, and tokens per sample (padded).
    pub batch: usize,
    pub seq: usize,
    pub optim: OptimKind,
    pub checkpointing: bool,
    /// Whether the kept layer inputs leave the device.
    pub offload: bool,
    /// Loading in 4 bits, with double quantization or not.
    pub four_bit: Option<FourBitShape>,
}

/// What loading in 4 bits changes in the estimate.
#[derive(Debug, Clone, Copy)]
pub struct FourBitShape {
    pub double_quant: bool,
}

/// What a micro-batch looks like to the kernels, for [`TrainKernels::step_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    pub batch: usize,
    pub seq: usize,
    /// The largest adapter rank.
    pub rank: usize,
    pub dtype: DType,
    pub dropout: bool,
    /// What the layers' kernels favour: memory when layer inputs are offloaded.
    pub favour: Favour,
}

/// The estimate for `model` with adapters `lora`, run as `run` says, in `dtype`, trained by
/// `kernels`.
pub fn estimate<B: Backend>(
    model: &GemmaConfig,
    lora: &LoraConfig,
    run: RunShape,
    dtype: DType,
    kernels: &dyn TrainKernels<B>,
) -> Result<MemoryEstimate> {
    let (h, i, layers) = (model.hidden_size, model.intermediate_size, model.num_hidden_layers());
    let (q, kv) = (
        model.num_attention_heads * model.head_dim,
        model.num_key_value_heads * model.head_dim,
    );
    // [in, out] of q, k, v, o, gate, up, down.
    let shapes = [[h, q], [h, kv], [h, kv], [q, h], [h, i], [h, i], [i, h]];
    let names = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    // Two norms a layer in Gemma 1, four from Gemma 2, and q/k norms from Gemma 3 (later
    // families' extra tensors are not counted).
    let norms = match model.family {
        Family::Gemma => 2 * h,
        Family::Gemma2 => 4 * h,
        _ => 4 * h + 2 * model.head_dim,
    };
    let per_layer: usize = shapes.iter().map(|[a, b]| a * b).sum::<usize>() + norms;
    let head = if model.tie_word_embeddings {
        0
    } else {
        model.vocab_size * h
    };
    let projections: usize = shapes.iter().map(|[a, b]| a * b).sum();
    let weights = match run.four_bit {
        None => (model.vocab_size * h + layers * per_layer + h + head) * dtype.size(),
        // Half a byte a weight, the blocks' absmax, and one layer's projections dequantized
        // for its GEMMs; the embedding, the head and the norms stay in the run dtype.
        Some(four_bit) => {
            let absmax = if four_bit.double_quant {
                1.0 / 64.0 + 4.0 / (64.0 * 256.0)
            } else {
                4.0 / 64.0
            };
            let quantized = (layers * projections) as f64 * (0.5 + absmax);
            let dense = (model.vocab_size * h + layers * (per_layer - projections) + h + head) * dtype.size();
            dense + quantized as usize + projections * dtype.size()
        }
    };

    let resolver = Resolver::new(lora)?;
    let (mut adapter_params, mut rank) = (0usize, 0usize);
    for layer in 0..layers {
        for (name, [inp, out]) in names.iter().zip(shapes) {
            if let Some(target) = resolver.target(&format!("model.layers.{layer}.{name}"), layer) {
                adapter_params += target.rank * (inp + out);
                rank = rank.max(target.rank);
            }
        }
        // [in, out] of the experts' two weights; each expert has an adapter of its own.
        let Some(moe) = model.moe else { continue };
        let n = moe.intermediate_size;
        for (name, [inp, out]) in [("experts.gate_up_proj", [h, 2 * n]), ("experts.down_proj", [n, h])] {
            if let Some(target) = resolver.parameter(&format!("model.layers.{layer}.{name}")) {
                adapter_params += moe.num_experts * target.rank * (inp + out);
            }
        }
    }
    // f32 parameter and gradient, then two moments: f32, or 8-bit codes with an f32 absmax
    // per block of 256.
    let optimizer = match run.optim {
        OptimKind::AdamW => 8.0,
        OptimKind::AdamW8bit => 2.0 + 8.0 / 256.0,
    };
    let adapters = (adapter_params as f64 * (8.0 + optimizer)) as u64;

    let (batch, seq) = (run.batch, run.seq);
    let input = batch * seq * h * dtype.size();
    let shape = StepShape {
        batch,
        seq,
        rank,
        dtype,
        dropout: lora.lora_dropout > 0.0,
        favour: Favour::offloading(run.checkpointing && run.offload),
    };
    let step = kernels.step_bytes(model, shape);
    let saved_inputs = match (run.checkpointing, run.offload) {
        (true, false) => layers * input,
        (true, true) => layers.min(2) * input,
        // autodiff keeps every layer's activations: about one recompute's buffers each.
        (false, _) => 0,
    } as u64;
    let step = if run.checkpointing { step } else { step * layers as u64 };
    Ok(MemoryEstimate {
        weights: weights as u64,
        adapters,
        saved_inputs,
        step,
        runtime: kernels.runtime_bytes(),
    })
}

/// burn's ops' buffers for one micro-batch, roughly: one layer's saved forward (normed input,
/// queries, keys, values, f32 attention scores and probabilities, the MLP's activations) twice
/// over for the backward's temporaries, and an LM-head chunk's logits with their f32 log
/// probabilities and gradient.
pub fn burn_step_bytes(model: &GemmaConfig, shape: StepShape) -> u64 {
    let tokens = shape.batch * shape.seq;
    let (h, i) = (model.hidden_size, model.intermediate_size);
    let (q, kv) = (
        model.num_attention_heads * model.head_dim,
        model.num_key_value_heads * model.head_dim,
    );
    let t = shape.dtype.size();
    let rows = tokens * (6 * h + 3 * q + 3 * kv + 3 * i) * t;
    let scores = shape.batch * model.num_attention_heads * shape.seq * shape.seq * (8 + t);
    let head = ember_model::HEAD_CHUNK_ROWS.min(tokens) * model.vocab_size * (8 + t);
    (2 * (rows + scores) + head) as u64
}
