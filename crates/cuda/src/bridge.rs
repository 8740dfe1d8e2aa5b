//! Between burn's CUDA tensors and raw device pointers.
//!
//! Ember's kernels run on plain [`CudaBackend`] tensors (burn's cubecl backend without fusion,
//! so every tensor has a buffer). An island of Ember's work first allocates its burn outputs,
//! then waits for burn's queue, then runs on Ember's stream and waits for it: pointers taken
//! here stay valid that whole time because the tensors they come from are held.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::Runtime;
use cubecl::cuda::{CudaDevice, CudaRuntime};

use crate::error::{CudaError, Result};
use crate::gemm::Elem;

/// burn's CUDA backend without fusion: what the fast path trains on.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;

/// A tensor's device memory, valid while this lives.
pub struct Held {
    pub ptr: u64,
    _resource: Box<dyn Any>,
    _tensor: CubeTensor<CudaRuntime>,
}

/// Holds `t`'s memory (made contiguous first if it is a strided view).
pub fn hold<const D: usize>(t: &Tensor<CudaBackend, D>) -> Result<Held> {
    hold_primitive(t.clone().into_primitive().tensor())
}

/// [`hold`] for an integer tensor.
pub fn hold_int<const D: usize>(t: &Tensor<CudaBackend, D, Int>) -> Result<Held> {
    hold_primitive(t.clone().into_primitive())
}

fn hold_primitive(mut tensor: CubeTensor<CudaRuntime>) -> Result<Held> {
    if !tensor.is_contiguous() {
        tensor = burn_cubecl::kernel::into_contiguous(tensor);
    }
    let resource = tensor
        .client
        .get_resource(tensor.handle.clone())
        .map_err(|e| CudaError::Backend(format!("{e:?}")))?;
    Ok(Held {
        ptr: resource.resource().ptr,
        _resource: Box::new(resource),
        _tensor: tensor,
    })
}

/// A new contiguous tensor whose contents Ember's kernels will write.
pub fn empty<const D: usize>(device: &CudaDevice, shape: [usize; D], dtype: DType) -> Tensor<CudaBackend, D> {
    Tensor::from_primitive(TensorPrimitive::Float(empty_primitive(device, shape, dtype)))
}

/// [`empty`] for an integer tensor.
pub fn empty_int<const D: usize>(device: &CudaDevice, shape: [usize; D], dtype: DType) -> Tensor<CudaBackend, D, Int> {
    Tensor::from_primitive(empty_primitive(device, shape, dtype))
}

fn empty_primitive<const D: usize>(device: &CudaDevice, shape: [usize; D], dtype: DType) -> CubeTensor<CudaRuntime> {
    let client = CudaRuntime::client(device);
    let bytes = shape.iter().product::<usize>() * dtype.size();
    let handle = client.empty(bytes.max(1));
    CubeTensor::new_contiguous(client, device.clone(), Shape::from(shape), handle, dtype)
}

/// Waits until burn's queued work on `device` is done, so Ember's stream may read its results
/// and write the buffers allocated since.
pub fn wait_for_burn(device: &CudaDevice) -> Result<()> {
    CudaBackend::sync(device).map_err(|e| CudaError::Backend(format!("{e:?}")))
}

pub fn elem(dtype: DType) -> Result<Elem> {
    match dtype {
        DType::F32 => Ok(Elem::F32),
        DType::BF16 => Ok(Elem::Bf16),
        other => Err(CudaError::Unsupported(format!(
            "the CUDA kernels run in bf16 or f32, not {other:?}"
        ))),
    }
}
