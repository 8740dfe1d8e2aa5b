use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use super::{AdamWConfig, Optimizer, StateMap, StateTensors};

/// PyTorch's `torch.optim.AdamW` with f32 moments (8 bytes of state per parameter).
///
/// Decoupled weight decay, then `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)`, the
/// exact order of operations of PyTorch's single-tensor implementation.
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    states: BTreeMap<String, Moments<B>>,
}

struct Moments<B: Backend> {
    step: u64,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            states: BTreeMap::new(),
        }
    }
}

impl<B: Backend> Optimizer<B> for AdamW<B> {
    fn update(&mut self, name: &str, param: Tensor<B, 1>, grad: Tensor<B, 1>, lr: f64) -> Tensor<B, 1> {
        let c = self.config;
        let state = self.states.entry(name.to_string()).or_insert_with(|| Moments {
            step: 0,
            exp_avg: grad.zeros_like(),
            exp_avg_sq: grad.zeros_like(),
        });
        state.step += 1;
        let param = param * (1.0 - lr * c.weight_decay);
        state.exp_avg = state.exp_avg.clone() * c.beta1 + grad.clone() * (1.0 - c.beta1);
        state.exp_avg_sq = state.exp_avg_sq.clone() * c.beta2 + grad.clone() * grad * (1.0 - c.beta2);
        let bias_correction1 = 1.0 - c.beta1.powi(state.step as i32);
        let bias_correction2 = 1.0 - c.beta2.powi(state.step as i32);
        let step_size = lr / bias_correction1;
        let denom = state.exp_avg_sq.clone().sqrt() / bias_correction2.sqrt() + c.eps;
        param - state.exp_avg.clone() / denom * step_size
    }

    fn state(&self) -> StateTensors {
        let mut out = Vec::new();
        for (name, s) in &self.states {
            out.push((format!("{name}.step"), TensorData::new(vec![s.step as i64], [1])));
            out.push((format!("{name}.exp_avg"), s.exp_avg.to_data()));
            out.push((format!("{name}.exp_avg_sq"), s.exp_avg_sq.to_data()));
        }
        out
    }

    fn load_state(&mut self, state: StateTensors, device: &B::Device) -> Result<(), String> {
        let mut map = StateMap::new(state);
        let mut states = BTreeMap::new();
        for name in map.names() {
            let step = map.take_step(&name)?;
            let mut tensor = |suffix: &str| -> Result<Tensor<B, 1>, String> {
                Ok(Tensor::from_data(map.take(&name, suffix)?.1, (device, DType::F32)))
            };
            let exp_avg = tensor("exp_avg")?;
            let exp_avg_sq = tensor("exp_avg_sq")?;
            states.insert(
                name,
                Moments {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        map.finish()?;
        self.states = states;
        Ok(())
    }

    fn state_sizes(&self) -> BTreeMap<String, usize> {
        self.states
            .iter()
            .map(|(name, s)| (name.clone(), s.exp_avg.dims()[0]))
            .collect()
    }

    fn state_bytes(&self) -> usize {
        self.states.values().map(|s| 8 * s.exp_avg.dims()[0]).sum()
    }
}
