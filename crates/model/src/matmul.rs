//! The model's matrix products, with f32 accuracy kept where the backend would lose it.
//!
//! burn 0.21's CUDA backend runs f32 matmuls on tensor cores in TF32, which keeps 10 of f32's 23
//! mantissa bits: on the tiny fixtures the logits then move by up to 3e-2 from transformers' f32
//! (PyTorch computes f32 matmuls in full f32 by default). So on that backend each f32 operand is
//! split into a bf16 head and an f32 tail, and `a·b = a_hi·b_hi + a_hi·b_lo + a_lo·b`: the heads
//! multiply exactly on tensor cores, the tails carry the rest, and the error drops to about 2^-19
//! of the product for three matmuls' cost. The gradient is `a·b`'s (the heads pass it through,
//! the tails' paths cancel), though the backward pass's own matmuls stay TF32. bf16 matmuls are
//! untouched: they are what training runs on.
//!
//! There is no switch: choosing CUDA and f32 (the device and dtype a caller picks) is what turns
//! the split on, so f32 means f32 on every device for every caller of the library.

use std::any::TypeId;
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `a · b` over the last two axes, as [`Tensor::matmul`], in full f32 precision for f32
/// operands whatever the backend.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dtype() != DType::F32 || !multiplies_f32_as_tf32::<B>(&a.device()) {
        return a.matmul(b);
    }
    let (a_hi, a_lo) = split(a);
    let (b_hi, b_lo) = split(b.clone());
    a_hi.clone().matmul(b_hi) + a_hi.matmul(b_lo) + a_lo.matmul(b)
}

/// `x · weightᵀ` for a weight stored `[out, in]` (transformers' layout), as [`matmul`]: every
/// projection and the LM head.
///
/// A single row (decoding a token) is multiplied as `weight · x`, `x` a column, so that no operand
/// is transposed: burn 0.21's fusion runs a `[1, in]` row times a transposed weight, followed by
/// elementwise ops, in its vector-matrix kernel `gemv_unit_perpendicular`, which ignores the
/// weight's strides and reads it as if contiguous (the unfused launch copies it first). Gemma 3n
/// decoded 2.2 off on WGPU from it (issue 18).
///
/// burn's ndarray (CPU) backend copies a transposed operand into row-major order before every
/// product: decoding one token copied every weight of the model, the tied LM head's
/// `[vocab, hidden]` included, and ran at 0.3 tokens/s on the Gemma 3 270M. There, when copying
/// the activations costs less than copying the weight (a few rows: small batches), this
/// computes `(weight · xᵀ)ᵀ`, the same products with the weight read in place.
pub fn matmul_transposed<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 2>) -> Tensor<B, D> {
    let dims = x.dims();
    let [out, inner] = weight.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let mut shape = dims;
    shape[D - 1] = out;
    if rows == 1 {
        return matmul(weight, x.reshape([inner, 1])).reshape(shape);
    }
    if rows * (inner + out) >= inner * out || !copies_transposed_operands::<B>(&x.device()) {
        return matmul(x, weight.transpose().unsqueeze::<D>());
    }
    let columns = x.reshape([rows, inner]).transpose(); // [in, rows]
    let product = matmul(weight, columns).transpose(); // [rows, out]
    product.reshape(shape)
}

/// Whether backend `B` runs f32 matmuls in TF32: burn's CUDA backend, under any wrapper
/// (`autodiff<fusion<cubecl<cuda>>>`).
fn multiplies_f32_as_tf32<B: Backend>(device: &B::Device) -> bool {
    backend_is::<B>(device, is_cuda)
}

/// Whether backend `B`'s matmul copies a transposed operand: burn's ndarray backend (autodiff
/// or not), whose matmul reshapes both operands into row-major order first.
fn copies_transposed_operands<B: Backend>(device: &B::Device) -> bool {
    backend_is::<B>(device, |name| name.contains("ndarray"))
}

/// `test` of backend `B`'s name (`Backend::name`), asked once per backend type and test.
fn backend_is<B: Backend>(device: &B::Device, test: fn(&str) -> bool) -> bool {
    static KNOWN: Mutex<Vec<(TypeId, usize, bool)>> = Mutex::new(Vec::new());
    let key = (TypeId::of::<B>(), test as usize);
    let mut known = KNOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&(_, _, answer)) = known.iter().find(|(t, f, _)| (*t, *f) == key) {
        return answer;
    }
    let answer = test(&B::name(device));
    known.push((key.0, key.1, answer));
    answer
}

/// Whether a backend name (`Backend::name`) is burn's CUDA backend's.
fn is_cuda(name: &str) -> bool {
    name.contains("cubecl<cuda>")
}

fn split<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    let hi = x.clone().cast(DType::BF16).cast(DType::F32);
    let lo = x - hi.clone();
    (hi, lo)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn only_the_cuda_backend_splits_f32_matmuls() {
        assert!(is_cuda("autodiff<fusion<cubecl<cuda>>>"));
        assert!(is_cuda("cubecl<cuda>"));
        assert!(!is_cuda("fusion<cubecl<wgpu<vulkan>>>"));
        assert!(!multiplies_f32_as_tf32::<NdArray>(&Default::default()));
        let a = Tensor::<NdArray, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &Default::default());
        let exact = a.clone().matmul(a.clone()).into_data();
        assert_eq!(matmul(a.clone(), a).into_data(), exact);
    }

    #[test]
    fn a_weight_is_read_in_place_on_the_cpu_with_the_same_products() {
        assert!(copies_transposed_operands::<NdArray>(&Default::default()));
        let device = Default::default();
        let weight = Tensor::<NdArray, 2>::random([300, 40], Distribution::Default, &device);
        // One row (decoding) takes `w · x`, x a column; 200 rows copy the weight as before.
        for rows in [1, 200] {
            let x = Tensor::<NdArray, 3>::random([1, rows, 40], Distribution::Default, &device);
            let expected = x.clone().matmul(weight.clone().transpose().unsqueeze::<3>());
            let product = matmul_transposed(x, weight.clone());
            assert_eq!(product.dims(), [1, rows, 300]);
            product
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        }
    }
}
