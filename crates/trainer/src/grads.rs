//! Loss and adapter gradients of one micro-batch, with or without layer-level gradient
//! checkpointing.
//!
//! With checkpointing, the forward runs without autodiff and keeps only each decoder
//! layer's input. The backward then walks the layers in reverse: it recomputes one layer
//! from its input, runs the layer's explicit backward (the [`TrainKernels`] chosen at run
//! time), collects that layer's adapter gradients and the gradient of its input, and drops
//! everything else. Peak activation memory is one layer's, not the model's. The LM head and
//! the loss run in chunks of rows so the `[tokens, vocab]` logits never exist all at once.
//! With `offload_activations` the kept layer inputs wait in host memory instead
//! ([`BatchKernels::offload`]). Without checkpointing, burn's autodiff records the whole graph.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use ember_lora::{adapter_paths, adapters, peft_key};
use ember_model::{AttentionMask, ForwardInput, GemmaForCausalLM, IGNORE_INDEX, cross_entropy_sum, shift_labels};

use crate::error::Result;
use crate::kernels::{BatchKernels, Favour, Offloaded, TrainKernels};
use crate::phases::{Clock, MemoryProbe, Phase, Phases};

/// Gradients of the adapter matrices by PEFT key, summed over micro-batches.
pub type AdapterGrads<B> = BTreeMap<String, Tensor<B, 2>>;

/// One micro-batch, host-side, ready to upload to either side of the autodiff backend.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    /// 0 = padding, 1..n = the sample a token belongs to.
    pub segments: Vec<i64>,
    pub positions: Vec<i64>,
    /// Next-token targets, already shifted; -100 = not trained.
    pub targets: Vec<i64>,
    pub num_trained_tokens: usize,
    /// Seeds this micro-batch's LoRA dropout masks, layer by layer, so that a checkpointed
    /// layer's recompute draws the masks its forward drew, and a resumed run the same ones.
    pub seed: u64,
}

impl MicroBatch {
    /// From a data-pipeline batch: labels are shifted to next-token targets here, and rows
    /// are padded to a multiple of `pad_to_multiple_of` tokens so that GPU backends see few
    /// distinct shapes (each new one compiles and tunes kernels again).
    pub fn from_batch(b: &ember_data::Batch, pad_to_multiple_of: usize) -> Self {
        let seq = b.seq_len.next_multiple_of(pad_to_multiple_of.max(1));
        let extra = seq - b.seq_len;
        let widen = |values: &[i64], fill: i64| -> Vec<i64> {
            values
                .chunks(b.seq_len)
                .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(fill, extra)))
                .collect()
        };
        let as_i64 = |values: &[u32]| values.iter().map(|&v| v as i64).collect::<Vec<_>>();
        let targets = widen(&shift_labels(&b.labels, b.seq_len), IGNORE_INDEX);
        Self {
            batch: b.batch_size,
            seq,
            input_ids: widen(&as_i64(&b.input_ids), 0),
            segments: widen(&as_i64(&b.segment_ids), 0),
            positions: widen(&as_i64(&b.position_ids), 0),
            num_trained_tokens: targets.iter().filter(|&&t| t != IGNORE_INDEX).count(),
            targets,
            seed: 0,
        }
    }

    pub fn input<Bk: Backend>(&self, device: &Bk::Device) -> ForwardInput<Bk> {
        let shape = [self.batch, self.seq];
        let ints = |v: &[i64]| Tensor::<Bk, 1, Int>::from_data(v, device).reshape(shape);
        ForwardInput {
            input_ids: ints(&self.input_ids),
            positions: ints(&self.positions),
            mask: AttentionMask::with_segments(ints(&self.segments)),
        }
    }

    pub fn targets<Bk: Backend>(&self, device: &Bk::Device) -> Tensor<Bk, 1, Int> {
        Tensor::from_data(self.targets.as_slice(), device)
    }
}

/// Adds the gradient of `sum(token losses) / normaliser` to `grads` and returns the
/// micro-batch's summed token loss. With checkpointing, `kernels` compute each layer and the
/// loss, and with `offload` the layer inputs wait off the device; without checkpointing, burn's
/// autodiff records the whole graph. With `phases`, the time of each phase is added to it (and,
/// with `probe`, what the allocator holds at its end).
#[allow(clippy::too_many_arguments)]
pub fn accumulate<B: AutodiffBackend>(
    model: &GemmaForCausalLM<B>,
    batch: &MicroBatch,
    normaliser: f64,
    checkpointing: Checkpointing,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    grads: &mut AdapterGrads<B::InnerBackend>,
    phases: Option<&mut Phases>,
    probe: Option<MemoryProbe>,
) -> Result<f64> {
    let clock = Clock::<B>::start(phases, probe, &model.model.embed_tokens.weight.device());
    match checkpointing {
        Checkpointing::Off => Ok(accumulate_full(model, batch, normaliser, grads, clock)),
        Checkpointing::Layers { offload } => {
            accumulate_checkpointed(model, batch, normaliser, offload, kernels, grads, clock)
        }
    }
}

/// How a micro-batch's activations are kept for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointing {
    /// burn's autodiff keeps the whole graph.
    Off,
    /// Each decoder layer's input is kept and the layer recomputed; with `offload`, the inputs
    /// wait in host memory.
    Layers { offload: bool },
}

/// A layer input kept for the backward.
enum Kept<B: Backend> {
    Device(Tensor<B, 3>),
    Offloaded(Offloaded<B>),
}

impl<B: Backend> Kept<B> {
    fn new(step: &mut dyn BatchKernels<B>, index: usize, x: Tensor<B, 3>, offload: bool) -> Result<Self> {
        Ok(if offload {
            Self::Offloaded(step.offload(index, x)?)
        } else {
            Self::Device(x)
        })
    }

    fn take(self, step: &mut dyn BatchKernels<B>, index: usize) -> Result<Tensor<B, 3>> {
        match self {
            Self::Device(x) => Ok(x),
            Self::Offloaded(offloaded) => step.reload(index, offloaded),
        }
    }
}

fn accumulate_full<B: AutodiffBackend>(
    model: &GemmaForCausalLM<B>,
    batch: &MicroBatch,
    normaliser: f64,
    grads: &mut AdapterGrads<B::InnerBackend>,
    mut clock: Clock<B>,
) -> f64 {
    let device = model.model.embed_tokens.weight.device();
    let input = batch.input(&device);
    let mut context = model.layer_context(&input);
    let mut x = model.embed(input.input_ids);
    for index in 0..model.model.layers.len() {
        seed_dropout(model, batch, index);
        x = model.layer(index, x, &mut context, None);
    }
    let hidden = model.final_norm(x);
    clock.lap(Phase::Forward);
    let [b, t, h] = hidden.dims();
    let logits = model.logits(hidden.reshape([1, b * t, h]));
    let vocab = logits.dims()[2];
    let loss_sum = cross_entropy_sum(logits.reshape([b * t, vocab]), batch.targets(&device));
    let value = loss_sum.clone().into_scalar().elem::<f64>();
    clock.lap(Phase::Head);
    let gradients = (loss_sum / normaliser).backward();
    for index in 0..model.model.layers.len() {
        for (path, lora) in adapters(index, &model.model.layers[index]) {
            for (matrix, param) in [('A', &lora.a), ('B', &lora.b)] {
                if let Some(g) = param.val().grad(&gradients) {
                    add_grad(grads, peft_key(&path, matrix), g);
                }
            }
        }
    }
    clock.lap(Phase::Backward);
    value
}

/// The forward keeps only each decoder layer's input; the backward recomputes one layer at
/// a time from it. Peak activation memory is one layer's, not the model's.
fn accumulate_checkpointed<B: AutodiffBackend>(
    model: &GemmaForCausalLM<B>,
    batch: &MicroBatch,
    normaliser: f64,
    offload: bool,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    grads: &mut AdapterGrads<B::InnerBackend>,
    mut clock: Clock<B>,
) -> Result<f64> {
    let device = model.model.embed_tokens.weight.device();
    let frozen = model.valid();
    let favour = Favour::offloading(offload);
    let mut step = kernels.prepare(&frozen, batch, favour)?;
    let keep = |index: usize| {
        seed_dropout(&frozen, batch, index);
        frozen.model.layers[index].draw_keep(batch.batch, batch.seq, &device)
    };
    let layers = frozen.model.layers.len();
    let mut layer_inputs = Vec::with_capacity(layers);
    let mut x = frozen.embed(batch.input::<B::InnerBackend>(&device).input_ids);
    for index in 0..layers {
        layer_inputs.push(Kept::new(step.as_mut(), index, x.clone(), offload)?);
        x = step.forward(index, x, keep(index))?;
    }
    clock.lap(Phase::Forward);

    let (loss, mut grad_y) = step.head(x, normaliser)?;
    let loss = loss.into_scalar().elem::<f64>();
    clock.lap(Phase::Head);

    for index in (0..layers).rev() {
        let input = layer_inputs
            .pop()
            .expect("one input per layer")
            .take(step.as_mut(), index)?;
        let (grad_x, layer_grads) = step.backward(index, input, grad_y, keep(index))?;
        let paths = adapter_paths(index, &frozen.model.layers[index]);
        for (path, lora) in paths.into_iter().zip(layer_grads) {
            let Some(lora) = lora else { continue };
            add_grad(grads, peft_key(&path, 'A'), lora.a);
            add_grad(grads, peft_key(&path, 'B'), lora.b);
        }
        grad_y = grad_x;
    }
    clock.lap(Phase::Backward);
    Ok(loss)
}

fn add_grad<B: Backend>(grads: &mut AdapterGrads<B>, key: String, g: Tensor<B, 2>) {
    let sum = match grads.remove(&key) {
        Some(previous) => previous + g,
        None => g,
    };
    grads.insert(key, sum);
}

fn has_dropout<B: Backend>(model: &GemmaForCausalLM<B>) -> bool {
    (model.model.layers.iter())
        .flat_map(|layer| layer.adapters())
        .flatten()
        .any(|lora| lora.dropout > 0.0)
}

/// Seeds the backend's generator for layer `index` of `batch`, when the adapters use dropout:
/// every pass over that layer then draws the same masks.
fn seed_dropout<B: Backend>(model: &GemmaForCausalLM<B>, batch: &MicroBatch, index: usize) {
    if has_dropout(model) {
        let device = model.model.embed_tokens.weight.device();
        B::seed(
            &device,
            batch
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(index as u64),
        );
    }
}
