//! Loss and adapter gradients of one micro-batch, with or without layer-level gradient
//! checkpointing.
//!
//! With checkpointing, the forward runs without autodiff and keeps only each decoder
//! layer's input. The backward then walks the layers in reverse: it reruns one layer under
//! autodiff on a fresh leaf, backpropagates `sum(y · dy)`, collects that layer's adapter
//! gradients and the gradient of its input, and drops everything else. Peak activation
//! memory is one layer's, not the model's. The LM head and the loss run in chunks of rows so
//! the `[tokens, vocab]` logits never exist all at once.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use ember_lora::{peft_key, projections};
use ember_model::{AttentionMask, ForwardInput, GemmaForCausalLM, IGNORE_INDEX, cross_entropy_sum, shift_labels};

use crate::phases::{Clock, Phases};

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

/// Rows of hidden states per LM-head chunk: bounds the logits held at once.
pub const HEAD_CHUNK_ROWS: usize = 2048;

/// Adds the gradient of `sum(token losses) / normaliser` to `grads` and returns the
/// micro-batch's summed token loss. With `phases`, the time of each phase is added to it.
pub fn accumulate<B: AutodiffBackend>(
    model: &GemmaForCausalLM<B>,
    batch: &MicroBatch,
    normaliser: f64,
    checkpointing: bool,
    grads: &mut AdapterGrads<B::InnerBackend>,
    phases: Option<&mut Phases>,
) -> f64 {
    let clock = Clock::<B>::start(phases, &model.model.embed_tokens.weight.device());
    if checkpointing {
        accumulate_checkpointed(model, batch, normaliser, grads, clock)
    } else {
        accumulate_full(model, batch, normaliser, grads, clock)
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
    let context = model.layer_context(&input);
    let mut x = model.embed(input.input_ids);
    for index in 0..model.model.layers.len() {
        seed_dropout::<B>(model, batch, index);
        x = model.layer(index, x, &context, None);
    }
    let hidden = model.final_norm(x);
    clock.lap(|p| &mut p.forward);
    let [b, t, h] = hidden.dims();
    let logits = model.logits(hidden.reshape([1, b * t, h]));
    let vocab = logits.dims()[2];
    let loss_sum = cross_entropy_sum(logits.reshape([b * t, vocab]), batch.targets(&device));
    let value = scalar(&loss_sum);
    clock.lap(|p| &mut p.head);
    let gradients = (loss_sum / normaliser).backward();
    for index in 0..model.model.layers.len() {
        collect_layer(model, index, &gradients, grads);
    }
    clock.lap(|p| &mut p.backward);
    value
}

fn accumulate_checkpointed<B: AutodiffBackend>(
    model: &GemmaForCausalLM<B>,
    batch: &MicroBatch,
    normaliser: f64,
    grads: &mut AdapterGrads<B::InnerBackend>,
    mut clock: Clock<B>,
) -> f64 {
    // Forward without autodiff, keeping each layer's input.
    let device = model.model.embed_tokens.weight.device();
    let frozen = model.valid();
    let inner_input = batch.input::<B::InnerBackend>(&device);
    let targets = batch.targets::<B>(&device);
    let inner_context = frozen.layer_context(&inner_input);
    let context = model.layer_context(&batch.input(&device));
    let dropout = has_dropout(model);
    let mut layer_inputs = Vec::with_capacity(model.model.layers.len());
    let mut x = frozen.embed(inner_input.input_ids);
    for index in 0..model.model.layers.len() {
        layer_inputs.push(x.clone());
        x = if dropout {
            // Dropout is drawn only under autodiff; the graph is dropped with the output's
            // autodiff wrapper, so only the layer's input is kept.
            seed_dropout::<B>(model, batch, index);
            model.layer(index, Tensor::from_inner(x), &context, None).inner()
        } else {
            frozen.layer(index, x, &inner_context, None)
        };
    }
    clock.lap(|p| &mut p.forward);

    // Head and loss, chunk by chunk, giving the gradient of the last layer's output.
    let [b, t, h] = x.dims();
    let rows = x.reshape([b * t, h]);
    let mut chunk_losses = Vec::new();
    let mut row_grads = Vec::new();
    for start in (0..b * t).step_by(HEAD_CHUNK_ROWS) {
        let len = HEAD_CHUNK_ROWS.min(b * t - start);
        let leaf = Tensor::<B, 2>::from_inner(rows.clone().narrow(0, start, len)).require_grad();
        let normed = model.final_norm(leaf.clone().reshape([1, len, h]));
        let logits = model.logits(normed).reshape([len, model.config.vocab_size]);
        let chunk_loss = cross_entropy_sum(logits, targets.clone().narrow(0, start, len));
        chunk_losses.push(chunk_loss.clone().inner());
        let gradients = (chunk_loss / normaliser).backward();
        row_grads.push(leaf.grad(&gradients).expect("the leaf takes part in the loss"));
    }
    let mut grad_y = Tensor::cat(row_grads, 0).reshape([b, t, h]);
    // One read for all chunks: each read waits for the device.
    let loss_value = Tensor::cat(chunk_losses, 0).sum().into_scalar().elem::<f64>();
    clock.lap(|p| &mut p.head);

    // Layers in reverse: recompute one under autodiff, backpropagate, move down.
    for index in (0..model.model.layers.len()).rev() {
        let leaf = Tensor::<B, 3>::from_inner(layer_inputs.pop().expect("one input per layer")).require_grad();
        seed_dropout::<B>(model, batch, index);
        let y = model.layer(index, leaf.clone(), &context, None);
        let gradients = (y * Tensor::from_inner(grad_y)).sum().backward();
        collect_layer(model, index, &gradients, grads);
        grad_y = match leaf.grad(&gradients) {
            Some(g) => g,
            None => break, // nothing below this layer needs a gradient
        };
    }
    clock.lap(|p| &mut p.backward);
    loss_value
}

fn has_dropout<B: Backend>(model: &GemmaForCausalLM<B>) -> bool {
    (0..model.model.layers.len()).any(|i| {
        projections(i, &model.model.layers[i])
            .iter()
            .any(|(_, linear)| linear.lora.as_ref().is_some_and(|lora| lora.dropout > 0.0))
    })
}

/// Seeds the backend's generator for layer `index` of `batch`, when the adapters use dropout:
/// every pass over that layer then draws the same masks.
fn seed_dropout<B: AutodiffBackend>(model: &GemmaForCausalLM<B>, batch: &MicroBatch, index: usize) {
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

/// Adds the adapter gradients of layer `index` found in `gradients` to `grads`.
fn collect_layer<B: AutodiffBackend>(
    model: &GemmaForCausalLM<B>,
    index: usize,
    gradients: &B::Gradients,
    grads: &mut AdapterGrads<B::InnerBackend>,
) {
    for (path, linear) in projections(index, &model.model.layers[index]) {
        let Some(lora) = &linear.lora else { continue };
        for (matrix, param) in [('A', &lora.a), ('B', &lora.b)] {
            if let Some(g) = param.val().grad(gradients) {
                let key = peft_key(&path, matrix);
                let sum = match grads.remove(&key) {
                    Some(previous) => previous + g,
                    None => g,
                };
                grads.insert(key, sum);
            }
        }
    }
}

fn scalar<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().elem::<f64>()
}
