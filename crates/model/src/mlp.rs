use burn::module::Module;
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::{DType, Tensor, backend::Backend};

use crate::config::Activation;
use crate::linear::Linear;

/// Gated GELU feed-forward: `down(act(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> Mlp<B> {
    /// `[.., hidden] -> [.., hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        let dtype = gate.dtype();
        // PyTorch evaluates GELU in f32 for bf16 inputs; do the same so bf16 runs agree.
        let gate = gate.cast(DType::F32);
        let gate = match self.activation {
            Activation::GeluTanh => gelu_approximate(gate),
            Activation::GeluErf => gelu(gate),
        };
        self.down_proj.forward(gate.cast(dtype) * self.up_proj.forward(x))
    }
}
