//! One optimizer step: gradients over the accumulation window, global-norm clipping, update.

use burn::module::Param;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use ember_lora::{peft_key, projections_mut};
use ember_model::GemmaForCausalLM;

use crate::grads::{AdapterGrads, MicroBatch, accumulate};
use crate::optim::Optimizer;

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
}

/// Settings of a step that do not change between steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// Clip the global gradient norm to this (`max_grad_norm`); `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    pub gradient_checkpointing: bool,
}

/// Accumulates gradients over `window` (the micro-batches of one optimizer step), with the
/// loss normalised by the trained tokens of the whole window, as transformers does since
/// 4.46; clips the global norm as `torch.nn.utils.clip_grad_norm_`; and applies `optimizer`.
pub fn optimizer_step<B: AutodiffBackend>(
    mut model: GemmaForCausalLM<B>,
    window: &[MicroBatch],
    lr: f64,
    settings: StepSettings,
    optimizer: &mut dyn Optimizer<B::InnerBackend>,
) -> (GemmaForCausalLM<B>, StepOutcome) {
    let trained_tokens: usize = window.iter().map(|b| b.num_trained_tokens).sum();
    let normaliser = trained_tokens.max(1) as f64;
    let mut grads = AdapterGrads::new();
    let mut loss_sum = 0.0;
    for batch in window {
        loss_sum += accumulate(&model, batch, normaliser, settings.gradient_checkpointing, &mut grads);
    }
    let loss = loss_sum / normaliser;
    let grad_norm = global_norm(&grads);
    let skipped = !loss.is_finite() || !grad_norm.is_finite();
    let outcome = StepOutcome {
        loss,
        grad_norm,
        trained_tokens,
        skipped,
    };
    if skipped {
        return (model, outcome);
    }
    let clip = match settings.max_grad_norm {
        Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
        None => 1.0,
    };
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (path, linear) in projections_mut(i, layer) {
            let Some(lora) = linear.lora.as_mut() else { continue };
            for (matrix, param) in [('A', &mut lora.a), ('B', &mut lora.b)] {
                let key = peft_key(&path, matrix);
                let Some(grad) = grads.remove(&key) else { continue };
                let value = param.val().inner();
                let shape = value.dims();
                let grad = if clip < 1.0 { grad * clip } else { grad };
                let updated = optimizer.update(&key, value.flatten(0, 1), grad.flatten(0, 1), lr);
                let updated = Tensor::<B, 2>::from_inner(updated.reshape(shape)).require_grad();
                *param = Param::initialized(param.id, updated);
            }
        }
    }
    (model, outcome)
}

/// `sqrt(Σ ‖g‖²)` over every adapter gradient, computed in f64 on the host side.
fn global_norm<B: burn::tensor::backend::Backend>(grads: &AdapterGrads<B>) -> f64 {
    grads
        .values()
        .map(|g| g.clone().square().sum().into_scalar().elem::<f64>())
        .sum::<f64>()
        .sqrt()
}
