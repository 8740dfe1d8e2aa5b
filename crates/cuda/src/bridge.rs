//! Between burn's CUDA tensors and raw device pointers.
//!
//! Ember's kernels run on plain [`CudaBackend`] tensors (burn's cubecl backend without fusion,
//! so every tensor has a buffer). An island of Ember's work first allocates its burn outputs,
//! then waits for burn's queue, then runs on Ember's stream and waits for it: pointers taken
//! here stay valid that whole time because the tensors they come from are held.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::{MemoryAllocationMode, Runtime};

use crate::error::{CudaError, Result};
use crate::gemm::Elem;
use ember_trainer::kernels::Favour;

/// burn's CUDA backend without fusion: what the fast path trains on.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;

/// A tensor's device memory, valid while this lives.
pub struct Held {
    pub ptr: u64,
    _resource: Box<dyn Any>,
    _tensor: CubeTensor<CudaRuntime>,
}

/// Tensors whose memory to hold, made contiguous first where they are strided views. Taking a
/// buffer asks burn's device thread and waits for its answer, so all of them go in one trip:
/// a step holds thousands of tensors.
#[derive(Default)]
pub struct Holds(Vec<CubeTensor<CudaRuntime>>);

impl Holds {
    /// Adds `t`; its [`Held`] will be at the returned index.
    pub fn add<const D: usize>(&mut self, t: &Tensor<CudaBackend, D>) -> usize {
        self.push(t.clone().into_primitive().tensor())
    }

    /// [`Holds::add`] for an integer tensor.
    pub fn add_int<const D: usize>(&mut self, t: &Tensor<CudaBackend, D, Int>) -> usize {
        self.push(t.clone().into_primitive())
    }

    fn push(&mut self, mut tensor: CubeTensor<CudaRuntime>) -> usize {
        if !tensor.is_contiguous() {
            tensor = burn_cubecl::kernel::into_contiguous(tensor);
        }
        self.0.push(tensor);
        self.0.len() - 1
    }

    /// Every added tensor's memory, in the order added, in one trip to burn's device thread.
    pub fn hold(self) -> Result<Vec<Held>> {
        let Some(client) = self.0.first().map(|t| t.client.clone()) else {
            return Ok(Vec::new());
        };
        let started = Instant::now();
        let handles: Vec<_> = self.0.iter().map(|t| t.handle.clone()).collect();
        let inner = client.clone();
        let resources = client
            .exclusive(move || handles.into_iter().map(|h| inner.get_resource(h)).collect::<Vec<_>>())
            .map_err(|e| CudaError::Backend(format!("{e:?}")))?;
        HOLD_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        HOLDS.fetch_add(1, Ordering::Relaxed);
        resources
            .into_iter()
            .zip(self.0)
            .map(|(resource, tensor)| {
                let resource = resource.map_err(|e| CudaError::Backend(format!("{e:?}")))?;
                Ok(Held {
                    ptr: resource.resource().ptr,
                    _resource: Box::new(resource),
                    _tensor: tensor,
                })
            })
            .collect()
    }
}

/// Host time spent waiting for burn's device thread in [`Holds::hold`] since the process
/// started, in nanoseconds, and the trips: `ember bench --breakdown` reports them.
static HOLD_NANOS: AtomicU64 = AtomicU64::new(0);
static HOLDS: AtomicU64 = AtomicU64::new(0);

/// `(seconds, trips)` of [`Holds::hold`] so far.
pub fn hold_time() -> (f64, u64) {
    (
        HOLD_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
        HOLDS.load(Ordering::Relaxed),
    )
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

/// Makes cubecl give every later tensor of this thread exact-size ("persistent") memory, reused
/// by the next tensor of its size. Its pool's pages would round a training step's tensors up:
/// at the Gemma-2B shape 8.4 GiB reserved for 5.4 GiB in use, a 2.3 GiB page kept for one
/// 78 MB temporary among them. [`release_unused`] returns the slices of sizes no longer used.
pub fn allocate_exactly(device: &CudaDevice) {
    // SAFETY: cubecl's caveat is memory that stays allocated after its tensors are gone (a
    // leak until a cleanup): `release_unused` is that cleanup, run before every micro-batch.
    unsafe { CudaRuntime::client(device).allocation_mode(MemoryAllocationMode::Persistent) };
}

/// Memory cubecl holds but no tensor uses, beyond which [`release_unused`] gives it back when
/// speed is favoured: a step's own tensors (~1 GiB at the Gemma-2B shape) are free between
/// steps and stay. Favouring memory, all of it goes back before each micro-batch (the step's
/// tensors are then allocated anew, a few milliseconds).
const UNUSED_LIMIT: u64 = 2 << 30;

/// Gives the driver back the memory no tensor uses, once it exceeds the limit `favour` sets:
/// the slices of tensor sizes that may not come again (a new batch length), pages of the pool.
pub fn release_unused(device: &CudaDevice, favour: Favour) {
    let limit = match favour {
        Favour::Speed => UNUSED_LIMIT,
        Favour::Memory => 0,
    };
    let client = CudaRuntime::client(device);
    if let Ok(usage) = client.memory_usage() {
        RESERVED_SEEN.fetch_max(usage.bytes_reserved, Ordering::Relaxed);
        if usage.bytes_reserved.saturating_sub(usage.bytes_in_use) > limit {
            client.memory_cleanup();
        }
    }
}

/// The most cubecl had reserved when [`release_unused`] looked, before releasing.
static RESERVED_SEEN: AtomicU64 = AtomicU64::new(0);

/// The most memory burn's allocator held before a release of Ember's: a step's peak, which a
/// reading after the step misses when a release came in between (favouring memory, before
/// the optimizer).
pub fn reserved_seen() -> u64 {
    RESERVED_SEEN.load(Ordering::Relaxed)
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
