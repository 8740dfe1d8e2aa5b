//! The device as Ember's kernels see it: the primary context cubecl also uses (so pointers are
//! valid in both), a stream of Ember's own, device allocations and kernel launches.
//!
//! cubecl's stream is private, so work is ordered by whole islands: the caller waits for burn's
//! queue before an island and [`Gpu::sync`] waits for this stream after it.

use std::ffi::c_void;

use cudarc::driver::{result, sys};

use crate::error::Result;

pub struct Gpu {
    ctx: sys::CUcontext,
    pub stream: sys::CUstream,
    /// Compute capability, e.g. (9, 0).
    pub arch: (i32, i32),
    /// Streaming multiprocessors, for sizing grids.
    pub sms: usize,
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Self> {
        result::init()?;
        let device = result::device::get(ordinal as i32)?;
        // SAFETY: retaining the device's primary context, which cubecl retains too; it outlives
        // every pointer Ember hands out because it is never released while a Gpu exists.
        let ctx = unsafe { result::primary_ctx::retain(device)? };
        unsafe { result::ctx::set_current(ctx)? };
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)?;
        let attr = |a| unsafe { result::device::get_attribute(device, a) };
        let arch = (
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
        Ok(Self { ctx, stream, arch, sms })
    }

    /// Makes this device's context current on the calling thread (cubecl may have switched).
    pub fn bind(&self) -> Result<()> {
        unsafe { result::ctx::set_current(self.ctx)? };
        Ok(())
    }

    /// Waits for everything queued on Ember's stream.
    pub fn sync(&self) -> Result<()> {
        unsafe { result::stream::synchronize(self.stream)? };
        Ok(())
    }

    /// # Safety
    /// `f` is a function of a loaded module and `params` point at values of its parameter types.
    pub unsafe fn launch(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        unsafe { result::launch_kernel(f, grid, (block, 1, 1), shared, self.stream, params)? };
        Ok(())
    }

    /// Copies `bytes` between device pointers, on Ember's stream.
    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes > 0 {
            unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream)? };
        }
        Ok(())
    }

    /// Uploads `data` to `dst`, waiting for the copy (the host buffer is dropped after).
    pub fn upload<T: Copy>(&self, dst: u64, data: &[T]) -> Result<()> {
        unsafe { result::memcpy_htod_async(dst, data, self.stream)? };
        self.sync()
    }

    /// Downloads `out.len()` values from `src`, waiting for them.
    pub fn download<T: Copy>(&self, out: &mut [T], src: u64) -> Result<()> {
        unsafe { result::memcpy_dtoh_async(out, src, self.stream)? };
        self.sync()
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.sync();
        unsafe {
            let _ = result::stream::destroy(self.stream);
        }
    }
}

/// Free bytes on device `ordinal` now (its primary context made current, created if need be).
pub fn free_memory(ordinal: usize) -> Result<u64> {
    result::init()?;
    let device = result::device::get(ordinal as i32)?;
    // SAFETY: the primary context, which cubecl retains too; never released while in use.
    let ctx = unsafe { result::primary_ctx::retain(device)? };
    unsafe { result::ctx::set_current(ctx)? };
    Ok(result::mem_get_info()?.0 as u64)
}

/// A device allocation of Ember's own (scratch and packed adapters), freed on drop.
pub struct Buffer {
    pub ptr: u64,
    pub bytes: usize,
}

impl Buffer {
    pub fn new(bytes: usize) -> Result<Self> {
        // SAFETY: a plain allocation in the current context; freed once, in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(256))? };
        Ok(Self { ptr, bytes })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}
