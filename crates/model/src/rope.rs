use burn::tensor::{DType, FloatDType, Int, Tensor, backend::Backend};

use crate::config::Rope;

/// Rotary position tables for one layer type, shared by all layers of that type.
///
/// Computed in f32 from the positions (as transformers does), then cast to the model dtype.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `[batch, 1, seq, head_dim]`
    cos: Tensor<B, 4>,
    /// `[batch, 1, seq, head_dim]`
    sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for `positions` `[batch, seq]`.
    pub fn new(rope: Rope, head_dim: usize, positions: Tensor<B, 2, Int>, dtype: DType) -> Self {
        let [batch, seq] = positions.dims();
        let device = positions.device();
        let half = head_dim / 2;
        let inv_freq = rope.inverse_frequencies(head_dim);
        let inv_freq = Tensor::<B, 1>::from_data(inv_freq.as_slice(), (&device, DType::F32));
        let positions = positions.cast(FloatDType::F32).reshape([batch, seq, 1]);
        let freqs = positions * inv_freq.reshape([1, 1, half]); // [batch, seq, half]
        // HF layout: the angle vector is the half-size frequencies repeated twice.
        let angles = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        Self {
            cos: angles.clone().cos().cast(dtype),
            sin: angles.sin().cast(dtype),
        }
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]` in the `rotate_half` layout.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, _, head_dim] = x.dims();
        let half = head_dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

impl Rope {
    /// The `head_dim / 2` rotation frequencies, in f32 as transformers computes them; a
    /// position's angles are `position · frequency` (in f32), repeated for both halves.
    pub fn inverse_frequencies(&self, head_dim: usize) -> Vec<f32> {
        // Proportional RoPE (Gemma 4) rotates the first `rotated` frequencies only; the others
        // are 0, which leaves their dimensions as they are.
        let rotated = (self.partial_rotary_factor * head_dim as f64 / 2.0).floor() as usize;
        (0..head_dim / 2)
            .map(|i| {
                if i >= rotated {
                    return 0.0;
                }
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (self.theta as f32).powf(exponent) / self.factor as f32
            })
            .collect()
    }
}

impl<B: Backend> RopeTables<B> {
    /// The gradient of [`RopeTables::apply`]'s input: the rotation's transpose,
    /// `g·cos + rotate_halfᵀ(g·sin)` with `rotate_halfᵀ([g1, g2]) = [g2, −g1]`.
    pub fn backward(&self, grad: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, _, head_dim] = grad.dims();
        let half = head_dim / 2;
        let gs = grad.clone() * self.sin.clone();
        let g1 = gs.clone().narrow(3, 0, half);
        let g2 = gs.narrow(3, half, half);
        grad * self.cos.clone() + Tensor::cat(vec![g2, g1.neg()], 3)
    }
}
