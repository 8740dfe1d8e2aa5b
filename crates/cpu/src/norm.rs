use burn::backend::NdArray;
use burn::tensor::DType;
use ember_model::RmsNorm;

use crate::error::Result;
use crate::values::Values;

/// Gemma's RMSNorm as `ember_model::RmsNorm` computes it in f32, over rows of the weight's
/// length: `x / sqrt(mean(x²) + eps) · (offset + w)`.
pub(crate) struct Norm {
    /// `offset + w`, as the generic path forms it once per call.
    scale: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub fn of(norm: &RmsNorm<NdArray>, name: &str) -> Result<Self> {
        let weight = Values::of(norm.weight.val().cast(DType::F32), name)?;
        let offset = norm.offset as f32;
        Ok(Self {
            scale: weight.get().iter().map(|w| w + offset).collect(),
            eps: norm.eps as f32,
        })
    }

    /// Normalises each row of `x` in place.
    pub fn apply(&self, x: &mut [f32]) {
        let width = self.scale.len();
        for row in x.chunks_exact_mut(width) {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let r = (mean_square + self.eps).sqrt().recip();
            for (v, s) in row.iter_mut().zip(&self.scale) {
                *v = *v * r * s;
            }
        }
    }

    /// The normalised rows of `x`, `x` left as it is.
    pub fn of_rows(&self, x: &[f32]) -> Vec<f32> {
        let mut out = x.to_vec();
        self.apply(&mut out);
        out
    }
}
