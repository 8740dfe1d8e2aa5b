use burn::module::Module;
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::{DType, Tensor, backend::Backend};

use crate::config::Activation;
use crate::gaussian_topk::{gaussian_topk, gaussian_topk_backward};
use crate::linear::{Linear, LinearSaved};
use crate::lora::LoraGrads;

/// Gated GELU feed-forward: `down(act(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
    /// Gemma 3n's activation sparsity: the share of each row of the gate zeroed before the
    /// activation by a Gaussian top-k (0 = dense).
    #[module(skip)]
    pub sparsity: f64,
}

impl<B: Backend> Mlp<B> {
    /// `[batch, seq, hidden] -> [batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let rows = x.reshape([batch * seq, hidden]);
        let gate = self.sparse(self.gate_proj.forward(rows.clone()));
        let product = activate(self.activation, gate) * self.up_proj.forward(rows);
        self.down_proj.forward(product).reshape([batch, seq, hidden])
    }

    /// The gate after Gemma 3n's Gaussian top-k, where the layer has it.
    fn sparse(&self, gate: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.sparsity > 0.0 {
            true => gaussian_topk(gate, self.sparsity),
            false => gate,
        }
    }
}

/// The gate activation in f32, cast back: PyTorch evaluates GELU in f32 for bf16 inputs.
pub(crate) fn activate<B: Backend, const D: usize>(activation: Activation, x: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    match activation {
        Activation::GeluTanh => gelu_approximate(x),
        Activation::GeluErf => gelu(x),
    }
    .cast(dtype)
}

/// `d act(x) / dx`, in f32.
pub(crate) fn activation_derivative<B: Backend>(activation: Activation, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let x = x.cast(DType::F32);
    match activation {
        Activation::GeluTanh => {
            // gelu(x) = x/2·(1 + tanh(c·(x + k·x³)))
            let (c, k) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
            let x2 = x.clone().square();
            let t = ((x.clone() + x.clone() * x2.clone() * k) * c).tanh();
            let dt = (t.clone().square().neg() + 1.0) * (x2 * (3.0 * k) + 1.0) * c;
            (t + 1.0) * 0.5 + x * dt * 0.5
        }
        Activation::GeluErf => {
            // Φ(x) + x·φ(x)
            let cdf = ((x.clone() / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
            let pdf = (x.clone().square() * -0.5).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
    }
}

/// What [`Mlp::backward`] needs from [`Mlp::forward_saving`].
#[derive(Debug, Clone)]
pub struct MlpSaved<B: Backend> {
    gate_proj: LinearSaved<B>,
    up_proj: LinearSaved<B>,
    down_proj: LinearSaved<B>,
    /// The gate projection's output (before the sparsity), the activation's input, the
    /// activation and the up projection it multiplied.
    gate_raw: Tensor<B, 2>,
    gate: Tensor<B, 2>,
    act: Tensor<B, 2>,
    up: Tensor<B, 2>,
}

/// The adapters' dropout masks of one MLP, in projection order (gate, up, down).
pub type MlpKeep<B> = [Option<Tensor<B, 2>>; 3];

impl<B: Backend> Mlp<B> {
    /// [`Mlp::forward`] on rows `[n, hidden]` for training, keeping what the backward needs.
    pub fn forward_saving(&self, x: Tensor<B, 2>, keep: MlpKeep<B>) -> (Tensor<B, 2>, MlpSaved<B>) {
        let [keep_gate, keep_up, keep_down] = keep;
        let (gate_raw, gate_proj) = self.gate_proj.forward_saving(x.clone(), keep_gate);
        let (up, up_proj) = self.up_proj.forward_saving(x, keep_up);
        let gate = self.sparse(gate_raw.clone());
        let act = activate(self.activation, gate.clone());
        let (out, down_proj) = self.down_proj.forward_saving(act.clone() * up.clone(), keep_down);
        let saved = MlpSaved {
            gate_proj,
            up_proj,
            down_proj,
            gate_raw,
            gate,
            act,
            up,
        };
        (out, saved)
    }

    /// The input's gradient and the adapters' gradients (gate, up, down), given the output's.
    pub fn backward(&self, saved: MlpSaved<B>, grad: Tensor<B, 2>) -> (Tensor<B, 2>, [Option<LoraGrads<B>>; 3]) {
        let (d_product, down) = self.down_proj.backward(saved.down_proj, grad);
        let d_act = d_product.clone() * saved.up;
        let d_up = d_product * saved.act;
        let dtype = d_act.dtype();
        let mut d_gate = (activation_derivative(self.activation, saved.gate) * d_act.cast(DType::F32)).cast(dtype);
        if self.sparsity > 0.0 {
            d_gate = gaussian_topk_backward(saved.gate_raw, d_gate, self.sparsity);
        }
        let (dx_gate, gate) = self.gate_proj.backward(saved.gate_proj, d_gate);
        let (dx_up, up) = self.up_proj.backward(saved.up_proj, d_up);
        (dx_gate + dx_up, [gate, up, down])
    }
}
