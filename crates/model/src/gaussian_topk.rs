//! Gemma 3n's activation sparsity: the MLP's gate keeps, per token, only the values above
//! `mean + std · Φ⁻¹(sparsity)` of its row (a Gaussian estimate of the top `1 − sparsity`),
//! shifted down by that cutoff: `relu(g − cutoff)`.

use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor, backend::Backend};

/// `relu(g − (mean(g) + std(g)·Φ⁻¹(sparsity)))` over the last axis of `g` `[n, width]`, in
/// `g`'s dtype as transformers computes it (population standard deviation).
pub fn gaussian_topk<B: Backend>(g: Tensor<B, 2>, sparsity: f64) -> Tensor<B, 2> {
    let (cutoff, _, _) = cutoff(g.clone(), sparsity);
    relu(g - cutoff)
}

/// The gradient of [`gaussian_topk`]'s input given its output's `grad`, through the cutoff's
/// mean and standard deviation too (as autograd computes it), in f32.
pub fn gaussian_topk_backward<B: Backend>(g: Tensor<B, 2>, grad: Tensor<B, 2>, sparsity: f64) -> Tensor<B, 2> {
    let dtype = g.dtype();
    let [_, width] = g.dims();
    let (cutoff, mean, std) = cutoff(g.clone(), sparsity);
    let kept = (g.clone() - cutoff).greater_elem(0.0).float().cast(DType::F32);
    let (g, mean, std) = (g.cast(DType::F32), mean.cast(DType::F32), std.cast(DType::F32));
    // out = relu(g − μ − σ·m): dg_j = δ_j − S/H − m·S·(g_j − μ)/(H·σ), S = Σ δ.
    let delta = grad.cast(DType::F32) * kept;
    let sum = delta.clone().sum_dim(1);
    let m = std_multiplier(sparsity) as f64;
    let through_std = sum.clone() * (g - mean) / (std * width as f64) * m;
    (delta - sum / width as f64 - through_std).cast(dtype)
}

/// The cutoff, mean and standard deviation of each row, `[n, 1]` each, in `g`'s dtype.
fn cutoff<B: Backend>(g: Tensor<B, 2>, sparsity: f64) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let mean = g.clone().mean_dim(1);
    let std = (g - mean.clone()).square().mean_dim(1).sqrt();
    let cutoff = mean.clone() + std.clone() * std_multiplier(sparsity) as f64;
    (cutoff, mean, std)
}

/// `Φ⁻¹(sparsity)` as torch computes it in f32: `erfinv(2p − 1)·√2`.
fn std_multiplier(sparsity: f64) -> f32 {
    let p = sparsity as f32;
    let x = 2.0 * p - 1.0;
    (erfinv(x as f64) as f32) * std::f64::consts::SQRT_2 as f32
}

/// The inverse error function, by Newton's method on a series for `erf` (|x| < 1; enough
/// precision for f32 results).
fn erfinv(x: f64) -> f64 {
    // Winitzki's approximation as the start, then Newton: erf'(y) = 2/√π·e^(−y²).
    let a = 0.147;
    let ln = (1.0 - x * x).ln();
    let t = 2.0 / (std::f64::consts::PI * a) + ln / 2.0;
    let mut y = x.signum() * ((t * t - ln / a).sqrt() - t).sqrt();
    for _ in 0..6 {
        let slope = 2.0 / std::f64::consts::PI.sqrt() * (-y * y).exp();
        y -= (erf(y) - x) / slope;
    }
    y
}

/// `erf(y) = 2/√π · Σ (−1)ⁿ y^(2n+1) / (n!·(2n+1))`, converging to f64 precision for |y| < 4.
fn erf(y: f64) -> f64 {
    let mut term = y;
    let mut sum = y;
    for n in 1..200 {
        term *= -y * y / n as f64;
        let next = term / (2 * n + 1) as f64;
        sum += next;
        if next.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multiplier_is_the_normal_quantile() {
        // Φ⁻¹(0.95) = 1.6448536…; Φ⁻¹(0.5) = 0.
        assert!(
            (std_multiplier(0.95) - 1.644_853_6).abs() < 1e-6,
            "{}",
            std_multiplier(0.95)
        );
        assert!(std_multiplier(0.5).abs() < 1e-7);
        assert!((erf(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
    }
}
