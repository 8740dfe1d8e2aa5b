//! Layer inputs kept in pinned host memory from a layer's forward to its backward
//! (`offload_activations`), copied on a stream of their own so that the copies run beside the
//! layers' compute.
//!
//! Forward: layer `i`'s input is copied out while layer `i` runs; its device memory is let go
//! once that copy is done (checked when the next input goes out). Backward: layer `i`'s input
//! comes back, and layer `i − 1`'s copy starts at once, beside layer `i`'s backward. On the
//! device there are then at most two layer inputs instead of one per layer.

use std::ffi::c_void;

use burn::tensor::{DType, Tensor};
use cubecl::cuda::CudaDevice;
use cudarc::driver::{result, sys};

use crate::bridge::{CudaBackend, Held, Holds, empty, wait_for_burn};
use crate::driver::Gpu;
use crate::error::Result;

/// A layer input on its way between the device and the host: the device tensor and its
/// memory stay held until `done` has passed (dropping one waits for it).
struct InFlight {
    tensor: Option<Tensor<CudaBackend, 3>>,
    _held: Held,
    done: Event,
}

impl InFlight {
    /// The tensor, once its copy is done.
    fn arrive(mut self) -> Result<Tensor<CudaBackend, 3>> {
        self.done.wait()?;
        Ok(self.tensor.take().expect("taken once"))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = self.done.wait();
    }
}

pub struct Offload {
    stream: sys::CUstream,
    host: Option<PinnedHost>,
    outgoing: Vec<InFlight>,
    /// The input of this layer, already coming back.
    incoming: Option<(usize, InFlight)>,
}

impl Offload {
    pub fn new() -> Result<Self> {
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)?;
        Ok(Self {
            stream,
            host: None,
            outgoing: Vec::new(),
            incoming: None,
        })
    }

    /// Starts copying layer `index`'s input `x` (of a micro-batch with `layers` layers) to
    /// the host, and lets go of the inputs whose copies are done.
    pub fn put(
        &mut self,
        gpu: &Gpu,
        device: &CudaDevice,
        layers: usize,
        index: usize,
        x: Tensor<CudaBackend, 3>,
    ) -> Result<()> {
        gpu.bind()?;
        let bytes = x.shape().num_elements() * x.dtype().size();
        if index == 0 {
            self.outgoing.clear();
            self.incoming = None;
            if self.host.as_ref().is_none_or(|h| h.bytes < layers * bytes) {
                self.host = None;
                self.host = Some(PinnedHost::new(layers * bytes)?);
            }
        }
        let host = self
            .host
            .as_ref()
            .expect("allocated for the first layer")
            .slot(index, bytes);
        let mut holds = Holds::default();
        holds.add(&x);
        let held = holds.hold()?.pop().expect("one tensor");
        // The first layer's input comes from burn's queue, the others from Ember's stream,
        // which each layer waits for.
        wait_for_burn(device)?;
        unsafe { sys::cuMemcpyDtoHAsync_v2(host, held.ptr, bytes, self.stream).result()? };
        let done = Event::record(self.stream)?;
        // The earlier copies have had a layer's compute to finish.
        self.outgoing.clear();
        self.outgoing.push(InFlight {
            tensor: Some(x),
            _held: held,
            done,
        });
        Ok(())
    }

    /// Layer `index`'s input back on the device, as `[shape]` of `dtype`; starts bringing
    /// back layer `index − 1`'s.
    pub fn take(
        &mut self,
        gpu: &Gpu,
        device: &CudaDevice,
        index: usize,
        shape: [usize; 3],
        dtype: DType,
    ) -> Result<Tensor<CudaBackend, 3>> {
        gpu.bind()?;
        self.outgoing.clear();
        let x = match self.incoming.take() {
            Some((i, copy)) if i == index => copy,
            _ => self.fetch(device, index, shape, dtype)?,
        };
        if index > 0 {
            self.incoming = Some((index - 1, self.fetch(device, index - 1, shape, dtype)?));
        }
        x.arrive()
    }

    fn fetch(&self, device: &CudaDevice, index: usize, shape: [usize; 3], dtype: DType) -> Result<InFlight> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        let tensor = empty(device, shape, dtype);
        let mut holds = Holds::default();
        holds.add(&tensor);
        let held = holds.hold()?.pop().expect("one tensor");
        let host = self
            .host
            .as_ref()
            .expect("inputs were offloaded before they are taken")
            .slot(index, bytes);
        // The new tensor's memory may still be read by burn's queued work on an older one.
        wait_for_burn(device)?;
        unsafe { sys::cuMemcpyHtoDAsync_v2(held.ptr, host, bytes, self.stream).result()? };
        Ok(InFlight {
            tensor: Some(tensor),
            _held: held,
            done: Event::record(self.stream)?,
        })
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        self.outgoing.clear();
        self.incoming = None;
        let _ = unsafe { result::stream::synchronize(self.stream) };
        let _ = unsafe { result::stream::destroy(self.stream) };
    }
}

/// Page-locked host memory, which the device copies to and from asynchronously.
struct PinnedHost {
    ptr: *mut c_void,
    bytes: usize,
}

impl PinnedHost {
    fn new(bytes: usize) -> Result<Self> {
        // SAFETY: a plain allocation, freed once in Drop; only the copies touch it.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0)? };
        Ok(Self { ptr, bytes })
    }

    /// Where layer `index`'s `bytes` go.
    fn slot(&self, index: usize, bytes: usize) -> *mut c_void {
        assert!(
            (index + 1) * bytes <= self.bytes,
            "pinned memory holds every layer's input"
        );
        unsafe { self.ptr.cast::<u8>().add(index * bytes).cast() }
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        let _ = unsafe { result::free_host(self.ptr) };
    }
}

/// A point in a stream's work.
struct Event(sys::CUevent);

impl Event {
    fn record(stream: sys::CUstream) -> Result<Self> {
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
        unsafe { result::event::record(event, stream)? };
        Ok(Self(event))
    }

    fn wait(&self) -> Result<()> {
        unsafe { result::event::synchronize(self.0)? };
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = unsafe { result::event::destroy(self.0) };
    }
}
