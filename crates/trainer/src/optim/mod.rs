//! Optimizers over the trainable (adapter) tensors, with the update rules of the reference
//! implementations: PyTorch's `AdamW` and bitsandbytes' `AdamW8bit`.
//!
//! Tensors are handled flattened and named (PEFT keys), so optimizer state is saved and
//! restored by name, independent of burn's run-specific parameter ids.

mod adamw;
mod adamw8bit;
mod packing;
mod quant;

pub use adamw::AdamW;
pub use adamw8bit::{AdamW8bit, BlockwiseAdamKernel, BlockwiseResult, BlockwiseStep, MIN_8BIT_SIZE, Scalars};
pub use quant::{BLOCK, dynamic_map};

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Hyper-parameters shared by the AdamW variants; defaults are PyTorch's except the weight
/// decay, which is the seed recipe's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// An optimizer's state as named host tensors, for checkpoints (bit-exact round trip).
pub type StateTensors = Vec<(String, TensorData)>;

/// One optimizer step on one tensor at a time.
pub trait Optimizer<B: Backend> {
    /// Returns `param` after one update with gradient `grad` (both f32, flattened, same length)
    /// at learning rate `lr`. `name` identifies the tensor's state across steps and checkpoints.
    fn update(&mut self, name: &str, param: Tensor<B, 1>, grad: Tensor<B, 1>, lr: f64) -> Tensor<B, 1>;

    /// [`Optimizer::update`] on each `(name, param, grad · grad_scale)` (the gradient is
    /// scaled when `grad_scale < 1`: clipping), with the same results. GPU backends pay per
    /// kernel launch and an adapter has hundreds of tensors, so implementations may update them
    /// packed together, or in one fused `kernel` where they have one.
    fn update_many(
        &mut self,
        items: Vec<(String, Tensor<B, 1>, Tensor<B, 1>)>,
        lr: f64,
        grad_scale: f64,
        _kernel: Option<&dyn BlockwiseAdamKernel<B>>,
    ) -> Vec<Tensor<B, 1>> {
        items
            .into_iter()
            .map(|(name, param, grad)| self.update(&name, param, scaled(grad, grad_scale), lr))
            .collect()
    }

    /// The whole state, e.g. `{name}.exp_avg`, `{name}.step`.
    fn state(&self) -> StateTensors;

    /// Restores what [`Optimizer::state`] returned.
    fn load_state(&mut self, state: StateTensors, device: &B::Device) -> Result<(), String>;

    /// How many values each named tensor's state is for, so a caller can check restored state
    /// against the tensors it will update (an update with state of another size is a bug).
    fn state_sizes(&self) -> BTreeMap<String, usize>;

    /// Bytes of optimizer state held on the device.
    fn state_bytes(&self) -> usize;
}

/// `grad · grad_scale`, or `grad` itself when nothing is to be scaled.
pub(crate) fn scaled<B: Backend>(grad: Tensor<B, 1>, grad_scale: f64) -> Tensor<B, 1> {
    if grad_scale < 1.0 { grad * grad_scale } else { grad }
}

/// Optimizer state being restored: entries grouped per tensor by its `{name}.step` entry,
/// taken one by one, with anything left over reported.
pub(crate) struct StateMap {
    map: BTreeMap<String, TensorData>,
}

impl StateMap {
    pub(crate) fn new(state: StateTensors) -> Self {
        Self {
            map: state.into_iter().collect(),
        }
    }

    /// Names of the tensors that have state.
    pub(crate) fn names(&self) -> Vec<String> {
        self.map
            .keys()
            .filter_map(|k| k.strip_suffix(".step").map(String::from))
            .collect()
    }

    /// Removes `{name}.{suffix}`, returning its key (for messages) and data.
    pub(crate) fn take(&mut self, name: &str, suffix: &str) -> Result<(String, TensorData), String> {
        let key = format!("{name}.{suffix}");
        let data = self
            .map
            .remove(&key)
            .ok_or_else(|| format!("optimizer state has no `{key}`"))?;
        Ok((key, data))
    }

    /// Removes and checks `{name}.step`: one non-negative integer.
    pub(crate) fn take_step(&mut self, name: &str) -> Result<u64, String> {
        let (key, data) = self.take(name, "step")?;
        match data.into_vec::<i64>().map_err(|e| format!("`{key}`: {e:?}"))?[..] {
            [step] if step >= 0 => Ok(step as u64),
            _ => Err(format!("`{key}` must be one non-negative integer")),
        }
    }

    /// Fails if an entry was never taken.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self.map.keys().next() {
            Some(extra) => Err(format!("optimizer state has an unexpected entry `{extra}`")),
            None => Ok(()),
        }
    }
}
