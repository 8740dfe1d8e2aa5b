//! One optimizer step: gradients over the accumulation window, global-norm clipping, update.

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use std::collections::HashMap;

use ember_lora::{adapters, adapters_mut, peft_key};
use ember_model::GemmaForCausalLM;

use crate::distributed::{Collective, Solo, sum_step};
use crate::error::Result;
use crate::grads::{AdapterGrads, Checkpointing, MicroBatch, accumulate};
use crate::kernels::TrainKernels;
use crate::optim::Optimizer;
use crate::phases::{Clock, MemoryProbe, Phase, Phases};

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss per trained token over the window.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub trained_tokens: usize,
    /// The loss or the gradients were not finite: nothing was updated.
    pub skipped: bool,
    /// Time (and memory) per phase when [`StepSettings::profile`] asked for it, else zero.
    pub phases: Phases,
}

/// Settings of a step that do not change between steps.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    /// Clip the global gradient norm to this (`max_grad_norm`); `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Layer-level checkpointing (`gradient_checkpointing`), with the kept inputs offloaded
    /// or not (`offload_activations`).
    pub checkpointing: Checkpointing,
    /// Measure [`Phases`]: each phase then waits for the device, which costs time.
    pub profile: bool,
    /// With `profile`, also read the allocator at the end of each phase.
    pub memory_probe: Option<MemoryProbe>,
}

/// Accumulates gradients over `window` (the micro-batches of one optimizer step), with the
/// loss normalised by the trained tokens of the whole window, as transformers does since
/// 4.46; clips the global norm as `torch.nn.utils.clip_grad_norm_`; and applies `optimizer`.
pub fn optimizer_step<B: AutodiffBackend>(
    model: GemmaForCausalLM<B>,
    window: &[MicroBatch],
    lr: f64,
    settings: StepSettings,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    optimizer: &mut dyn Optimizer<B::InnerBackend>,
) -> Result<(GemmaForCausalLM<B>, StepOutcome)> {
    let trained_tokens = window.iter().map(|b| b.num_trained_tokens).sum();
    shared_optimizer_step(
        model,
        window,
        trained_tokens,
        lr,
        settings,
        kernels,
        optimizer,
        &mut Solo,
    )
}

/// [`optimizer_step`] as one rank of a data-parallel run: `window` is this rank's share of the
/// step's micro-batches and `trained_tokens` the trained tokens of all ranks' shares. The
/// gradients and the loss are summed across `collective` before the norm, so every rank clips,
/// skips and updates alike.
#[allow(clippy::too_many_arguments)]
pub fn shared_optimizer_step<B: AutodiffBackend>(
    mut model: GemmaForCausalLM<B>,
    window: &[MicroBatch],
    trained_tokens: usize,
    lr: f64,
    settings: StepSettings,
    kernels: &dyn TrainKernels<B::InnerBackend>,
    optimizer: &mut dyn Optimizer<B::InnerBackend>,
    collective: &mut dyn Collective,
) -> Result<(GemmaForCausalLM<B>, StepOutcome)> {
    let normaliser = trained_tokens.max(1) as f64;
    let mut grads = AdapterGrads::new();
    let mut loss_sum = 0.0;
    let mut phases = Phases::default();
    for batch in window {
        let timing = settings.profile.then_some(&mut phases);
        loss_sum += accumulate(
            &model,
            batch,
            normaliser,
            settings.checkpointing,
            kernels,
            &mut grads,
            timing,
            settings.memory_probe,
        )?;
    }
    sum_step(collective, &mut grads, &mut loss_sum)?;
    let device = model.model.embed_tokens.weight.device();
    let mut optimizer_phases = Phases::default();
    let mut clock = Clock::<B::InnerBackend>::start(
        settings.profile.then_some(&mut optimizer_phases),
        settings.memory_probe,
        &device,
    );
    let loss = loss_sum / normaliser;
    let grad_norm = kernels.global_norm(&grads)?;
    let skipped = !loss.is_finite() || !grad_norm.is_finite();
    let mut outcome = StepOutcome {
        loss,
        grad_norm,
        trained_tokens,
        skipped,
        phases,
    };
    if skipped {
        return Ok((model, outcome));
    }
    // Applied to the gradients by the optimizer (in its packed or fused form: one operation).
    let clip = match settings.max_grad_norm {
        Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
        None => 1.0,
    };
    // Every adapter tensor in one call: optimizers batch them into few kernel launches.
    let mut items = Vec::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (path, lora) in adapters(i, layer) {
            for (matrix, param) in [('A', &lora.a), ('B', &lora.b)] {
                let key = peft_key(&path, matrix);
                let Some(grad) = grads.remove(&key) else { continue };
                items.push((key, param.val().inner().flatten(0, 1), grad.flatten(0, 1)));
            }
        }
    }
    let keys: Vec<String> = items.iter().map(|(key, _, _)| key.clone()).collect();
    let mut updated: HashMap<String, Tensor<B::InnerBackend, 1>> = keys
        .into_iter()
        .zip(optimizer.update_many(items, lr, clip, kernels.blockwise_adam()))
        .collect();
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (path, lora) in adapters_mut(i, layer) {
            for (matrix, param) in [('A', &mut lora.a), ('B', &mut lora.b)] {
                let Some(value) = updated.remove(&peft_key(&path, matrix)) else {
                    continue;
                };
                let shape = param.val().dims();
                let value = Tensor::<B, 2>::from_inner(value.reshape(shape)).require_grad();
                *param = Param::initialized(param.id, value);
            }
        }
    }
    clock.lap(Phase::Optimizer);
    drop(clock);
    outcome.phases.add(&optimizer_phases);
    Ok((model, outcome))
}

/// `sqrt(Σ ‖g‖²)` over every adapter gradient: per-tensor sums on the device, read back in
/// one transfer (each read waits for the device) and added in f64.
pub fn global_norm<B: burn::tensor::backend::Backend>(grads: &AdapterGrads<B>) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    let sums: Vec<Tensor<B, 1>> = grads.values().map(|g| g.clone().square().sum()).collect();
    let sums = Tensor::cat(sums, 0).into_data().convert::<f64>();
    sums.iter::<f64>().sum::<f64>().sqrt()
}
