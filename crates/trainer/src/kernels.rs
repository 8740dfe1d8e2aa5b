//! How a training step computes the decoder layers and the loss.
//!
//! The step's schedule (forward keeping each layer's input, the loss, then each layer's
//! recompute and backward in reverse) lives in [`crate::grads`]; the arithmetic of each piece
//! is a [`TrainKernels`] implementation. [`BurnKernels`] is the reference: the model's explicit
//! backward in burn ops, on any backend. A backend may bring faster kernels for the same
//! functions (`ember-cuda`), checked against it.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorCreationOptions, TensorData};
use ember_model::{BatchDecodeStep, DecodeStep, GemmaConfig, GemmaForCausalLM, LayerContext, LayerGrads, LayerKeep};

use crate::error::Result;
use crate::estimate::{StepShape, burn_step_bytes};
use crate::grads::{AdapterGrads, MicroBatch};
use crate::optim::BlockwiseAdamKernel;

/// The kernels of a training step, chosen at run time.
pub trait TrainKernels<B: Backend> {
    /// A short name for logs and benchmark reports.
    fn name(&self) -> &'static str;

    /// Why these kernels cannot train `model`, if they cannot.
    fn unsupported(&self, model: &GemmaForCausalLM<B>) -> Option<String>;

    /// Starts (or stops) timing the kernels' own work by category, for benchmarks; kernels
    /// that cannot do so ignore it.
    fn set_profiling(&self, _on: bool) {}

    /// `(category, seconds, FLOPs)` of the kernels' own work since profiling started.
    fn kernel_times(&self) -> Vec<(String, f64, f64)> {
        Vec::new()
    }

    /// Device memory the kernels hold outside burn's allocator (their own scratch and copies).
    fn device_bytes(&self) -> u64 {
        0
    }

    /// `sqrt(Σ ‖g‖²)` over every adapter gradient (the step's clipping norm).
    fn global_norm(&self, grads: &AdapterGrads<B>) -> Result<f64> {
        Ok(crate::step::global_norm(grads))
    }

    /// A fused form of 8-bit AdamW's packed update, where these kernels have one.
    fn blockwise_adam(&self) -> Option<&dyn BlockwiseAdamKernel<B>> {
        None
    }

    /// Generation on these kernels, where they have it: the steps of one generation with a KV
    /// cache of `capacity` positions, each step of at most `max_step` tokens (the prompt).
    fn decoder<'a>(
        &'a self,
        _model: &'a GemmaForCausalLM<B>,
        _capacity: usize,
        _max_step: usize,
    ) -> Option<Result<Box<dyn DecodeStep + 'a>>> {
        None
    }

    /// Batched generation on these kernels, where they have it: `rows` sequences with KV caches
    /// of `capacity` positions each, prompts of at most `max_prompt` tokens. Without it,
    /// callers step [`TrainKernels::decoder`]s a row at a time.
    fn batch_decoder<'a>(
        &'a self,
        _model: &'a GemmaForCausalLM<B>,
        _rows: usize,
        _capacity: usize,
        _max_prompt: usize,
    ) -> Option<Result<Box<dyn BatchDecodeStep + 'a>>> {
        None
    }

    /// Device bytes of the kernels' own buffers for one micro-batch of `shape` (one layer's
    /// recompute and backward, an LM-head chunk): what [`crate::estimate`] counts for them.
    fn step_bytes(&self, model: &GemmaConfig, shape: StepShape) -> u64 {
        burn_step_bytes(model, shape)
    }

    /// Fixed device bytes of the runtime the kernels bring (a CUDA context, libraries).
    fn runtime_bytes(&self) -> u64 {
        0
    }

    /// Free memory on `device` now, where the kernels can tell.
    fn free_bytes(&self, _device: &B::Device) -> Option<u64> {
        None
    }

    /// The kernels for one micro-batch: its positions, masks and targets set up once for all
    /// layers, their buffers laid out for `favour`.
    fn prepare<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<B>,
        batch: &MicroBatch,
        favour: Favour,
    ) -> Result<Box<dyn BatchKernels<B> + 'a>>;
}

/// What a micro-batch's kernels favour where device memory and speed trade off: a run that
/// offloads its layer inputs (`offload_activations`) asks for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Favour {
    #[default]
    Speed,
    Memory,
}

impl Favour {
    /// What a run favours, given whether it offloads its layer inputs.
    pub fn offloading(offload: bool) -> Self {
        if offload { Self::Memory } else { Self::Speed }
    }
}

/// One micro-batch's layer forward, layer backward and loss.
pub trait BatchKernels<B: Backend> {
    /// Decoder layer `index` on `x` `[batch, seq, hidden]`, with the adapters' dropout masks.
    fn forward(&mut self, index: usize, x: Tensor<B, 3>, keep: LayerKeep<B>) -> Result<Tensor<B, 3>>;

    /// Recomputes layer `index` on its input `x` and returns the gradient of `x` and of the
    /// layer's adapters, given the gradient `grad` of its output.
    fn backward(
        &mut self,
        index: usize,
        x: Tensor<B, 3>,
        grad: Tensor<B, 3>,
        keep: LayerKeep<B>,
    ) -> Result<(Tensor<B, 3>, LayerGrads<B>)>;

    /// The final norm, LM head and loss on the last layer's output `x`: the summed token
    /// losses `[1]` and the gradient of `sum / normaliser` with respect to `x`.
    fn head(&mut self, x: Tensor<B, 3>, normaliser: f64) -> Result<(Tensor<B, 1>, Tensor<B, 3>)>;

    /// The summed token losses `[1]` of the last layer's output `x`, without a gradient
    /// (evaluation).
    fn loss(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 1>>;

    /// The soft-capped logits `[batch, seq, vocab]` of the last layer's output `x`, in the
    /// model dtype (checks against transformers' logits).
    fn logits(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>>;

    /// Moves layer `index`'s input `x` off the device until [`Self::reload`] (training's
    /// `offload_activations`); the step keeps what this returns meanwhile. By default a copy in
    /// host memory, made at once; the CUDA kernels copy into pinned memory beside the compute.
    fn offload(&mut self, index: usize, x: Tensor<B, 3>) -> Result<Offloaded<B>> {
        let _ = index;
        let device = x.device();
        Ok(Offloaded::Host(x.into_data(), device))
    }

    /// Layer `index`'s input as [`Self::offload`] left it, on the device again. Called for
    /// the layers in reverse order, each once.
    fn reload(&mut self, index: usize, offloaded: Offloaded<B>) -> Result<Tensor<B, 3>> {
        match offloaded {
            Offloaded::Host(data, device) => {
                let dtype = data.dtype;
                Ok(Tensor::from_data(
                    data,
                    TensorCreationOptions::new(device).with_dtype(dtype),
                ))
            }
            Offloaded::Kernels => Err(crate::TrainError::Kernels(format!(
                "layer {index}'s input was offloaded by other kernels"
            ))),
        }
    }
}

/// A layer input [`BatchKernels::offload`] moved off the device.
pub enum Offloaded<B: Backend> {
    /// Its values in host memory.
    Host(TensorData, B::Device),
    /// The kernels keep it themselves.
    Kernels,
}

/// The last decoder layer's output for `batch`: the embeddings, then each layer on `step`
/// without dropout masks (evaluation and logit checks run the adapters whole).
pub fn forward_layers<B: Backend>(
    model: &GemmaForCausalLM<B>,
    step: &mut dyn BatchKernels<B>,
    batch: &MicroBatch,
) -> Result<Tensor<B, 3>> {
    let device = model.model.embed_tokens.weight.device();
    let mut x = model.embed(batch.input::<B>(&device).input_ids);
    for index in 0..model.model.layers.len() {
        x = step.forward(index, x, Default::default())?;
    }
    Ok(x)
}

/// The reference kernels: the model's forward and explicit backward in burn ops.
#[derive(Debug, Clone, Copy, Default)]
pub struct BurnKernels;

impl<B: Backend> TrainKernels<B> for BurnKernels {
    fn name(&self) -> &'static str {
        "burn"
    }

    fn unsupported(&self, _model: &GemmaForCausalLM<B>) -> Option<String> {
        None
    }

    fn prepare<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<B>,
        batch: &MicroBatch,
        _favour: Favour,
    ) -> Result<Box<dyn BatchKernels<B> + 'a>> {
        let device = model.model.embed_tokens.weight.device();
        let input = batch.input::<B>(&device);
        Ok(Box::new(BurnBatch {
            model,
            context: model.layer_context(&input),
            targets: batch.targets(&device),
        }))
    }
}

struct BurnBatch<'a, B: Backend> {
    model: &'a GemmaForCausalLM<B>,
    context: LayerContext<B>,
    targets: Tensor<B, 1, Int>,
}

impl<B: Backend> BatchKernels<B> for BurnBatch<'_, B> {
    fn forward(&mut self, index: usize, x: Tensor<B, 3>, keep: LayerKeep<B>) -> Result<Tensor<B, 3>> {
        Ok(self.model.layer_saving(index, x, &mut self.context, keep).0)
    }

    fn backward(
        &mut self,
        index: usize,
        x: Tensor<B, 3>,
        grad: Tensor<B, 3>,
        keep: LayerKeep<B>,
    ) -> Result<(Tensor<B, 3>, LayerGrads<B>)> {
        // The recompute stores shared keys and values again (the same ones) and reads those
        // of earlier layers kept from the forward.
        let (_, saved) = self.model.layer_saving(index, x, &mut self.context, keep);
        Ok(self.model.layer_backward(index, saved, &mut self.context, grad))
    }

    fn head(&mut self, x: Tensor<B, 3>, normaliser: f64) -> Result<(Tensor<B, 1>, Tensor<B, 3>)> {
        let [batch, seq, hidden] = x.dims();
        let (loss, grad) = self
            .model
            .head_loss(x.reshape([batch * seq, hidden]), self.targets.clone(), normaliser);
        Ok((loss, grad.reshape([batch, seq, hidden])))
    }

    fn loss(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 1>> {
        let [batch, seq, hidden] = x.dims();
        Ok(self
            .model
            .head_loss_sum(x.reshape([batch * seq, hidden]), self.targets.clone()))
    }

    fn logits(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        Ok(self.model.logits(self.model.final_norm(x)))
    }
}
