//! Gradient sums between the GPUs of a data-parallel run through NCCL, one process per GPU.
//!
//! The ranks' TCP group (`ember_trainer::distributed::TcpGroup`) hands NCCL's id from rank 0 to
//! the others and tells when a rank's process has ended; NCCL moves the numbers, over NVLink or
//! PCIe between the GPUs of a host and over the network between hosts. The values are staged
//! through a device buffer on a stream of their own: the trainer sums once per optimizer step,
//! after burn's backward has been read to the host, so nothing orders against burn's stream.
//!
//! NCCL adds in an order of its own (not rank order, unlike the TCP group); every rank gets the
//! same sum, which is what keeps the ranks' adapters identical. With two ranks the sum is exactly
//! the TCP group's (one addition commutes).

use std::ffi::c_char;
use std::time::{Duration, Instant};

use cudarc::driver::{result as driver, sys as cuda};
use cudarc::nccl::{result as nccl, sys};
use ember_trainer::distributed::{Collective, CollectiveError, TcpGroup};

use crate::driver::{Buffer, Gpu};

/// How often a waiting sum looks at NCCL's error state and the other ranks' connections.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// This process's rank in a run whose ranks sum over NCCL.
pub struct NcclGroup {
    tcp: TcpGroup,
    gpu: Gpu,
    comm: sys::ncclComm_t,
    buffer: Option<Buffer>,
    timeout: Duration,
}

// SAFETY: the communicator and stream are used by one thread at a time (`&mut self`).
unsafe impl Send for NcclGroup {}

impl NcclGroup {
    /// Joins the NCCL communicator of `tcp`'s run on GPU `ordinal` (this rank's CUDA device).
    /// A sum that waits past `timeout` for another rank aborts the communicator.
    pub fn new(mut tcp: TcpGroup, ordinal: usize, timeout: Duration) -> Result<Self, CollectiveError> {
        let rank = tcp.rank();
        let failed = |what: &str, detail: String| CollectiveError::Handshake {
            rank,
            message: format!("could not {what}: {detail}"),
        };
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(failed(
                "load NCCL (libnccl.so)",
                "it is not on the library path. PyTorch's nvidia-nccl wheels ship it as libnccl.so.2 \
                 only: add a link named libnccl.so to it in a folder on LD_LIBRARY_PATH, or install NCCL"
                    .into(),
            ));
        }
        // Rank 0's id, sent to every rank as a sum in which the others add zeros.
        let mut id = [0f64; 128];
        if rank == 0 {
            let unique = nccl::get_uniqueid().map_err(|e| failed("create an NCCL id", nccl_message(e.0)))?;
            for (slot, byte) in id.iter_mut().zip(unique.internal) {
                *slot = f64::from(byte as u8);
            }
        }
        tcp.sum_f64(&mut id)?;
        let gpu = Gpu::new(ordinal).map_err(|e| failed(&format!("open cuda:{ordinal}"), e.to_string()))?;
        let internal: [c_char; 128] = std::array::from_fn(|i| id[i] as u8 as c_char);
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is written by NCCL; the id is the one rank 0 created, on every rank.
        unsafe {
            nccl::comm_init_rank(
                &mut comm,
                tcp.world_size() as i32,
                sys::ncclUniqueId { internal },
                rank as i32,
            )
        }
        .map_err(|e| failed("join the NCCL communicator", nccl_message(e.0)))?;
        Ok(Self {
            tcp,
            gpu,
            comm,
            buffer: None,
            timeout,
        })
    }

    /// Sums `values` (of `T`, NCCL's `datatype`) across the ranks, in place.
    fn sum<T: Copy>(&mut self, values: &mut [T], datatype: sys::ncclDataType_t) -> Result<(), CollectiveError> {
        let bytes = std::mem::size_of_val(values);
        if bytes == 0 {
            return Ok(());
        }
        self.gpu
            .bind()
            .map_err(|e| self.io("selecting the GPU", e.to_string()))?;
        if self.buffer.as_ref().is_none_or(|b| b.bytes < bytes) {
            self.buffer = None;
            let buffer = Buffer::new(bytes).map_err(|e| self.io("allocating the sum's buffer", e.to_string()))?;
            self.buffer = Some(buffer);
        }
        let ptr = self.buffer.as_ref().expect("allocated above").ptr;
        let started = Instant::now();
        let stream = self.gpu.stream;
        // SAFETY: the buffer holds `bytes`; the host slice lives until the stream is waited for
        // below (or the communicator aborted and the process ends the run).
        unsafe {
            driver::memcpy_htod_async(ptr, values, stream).map_err(|e| self.io("copying to the GPU", e.to_string()))?;
            nccl::all_reduce(
                ptr as *const _,
                ptr as *mut _,
                values.len(),
                datatype,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream as _,
            )
            .map_err(|e| self.io("NCCL all-reduce", nccl_message(e.0)))?;
            driver::memcpy_dtoh_async(values, ptr, stream)
                .map_err(|e| self.io("copying from the GPU", e.to_string()))?;
        }
        self.wait()?;
        tracing::debug!(bytes, seconds = started.elapsed().as_secs_f64(), "NCCL sum");
        Ok(())
    }

    /// Waits for the stream, looking every [`CHECK_EVERY`] at NCCL's error state and whether a
    /// rank's process has ended (NCCL would wait for it forever).
    fn wait(&mut self) -> Result<(), CollectiveError> {
        let start = Instant::now();
        let mut checked = start;
        loop {
            // SAFETY: a stream of this process's, alive while `self.gpu` is.
            match unsafe { cuda::cuStreamQuery(self.gpu.stream) } {
                cuda::CUresult::CUDA_SUCCESS => return Ok(()),
                cuda::CUresult::CUDA_ERROR_NOT_READY => {}
                error => return Err(self.io("waiting for the sum", format!("{error:?}"))),
            }
            if checked.elapsed() >= CHECK_EVERY {
                checked = Instant::now();
                let mut state = sys::ncclResult_t::ncclSuccess;
                // SAFETY: a live communicator; NCCL writes its asynchronous error state.
                unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
                if !matches!(
                    state,
                    sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
                ) {
                    return Err(self.io("NCCL", nccl_message(state)));
                }
                self.tcp.check_peers()?;
                if start.elapsed() > self.timeout {
                    return Err(CollectiveError::Stalled { timeout: self.timeout });
                }
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn io(&self, what: &str, detail: String) -> CollectiveError {
        CollectiveError::Io {
            what: format!("rank {}: {what}", self.tcp.rank()),
            source: std::io::Error::other(detail),
        }
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world_size(&self) -> usize {
        self.tcp.world_size()
    }

    fn sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.sum(values, sys::ncclDataType_t::ncclFloat32)
    }

    fn sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.sum(values, sys::ncclDataType_t::ncclFloat64)
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        // Abort, not destroy: destroy waits for the other ranks, which may be gone.
        // SAFETY: the communicator is not used after this.
        unsafe {
            let _ = nccl::comm_abort(self.comm);
        }
    }
}

/// NCCL's own words for `result`.
fn nccl_message(result: sys::ncclResult_t) -> String {
    // SAFETY: NCCL returns a static string for every result code.
    let text = unsafe { std::ffi::CStr::from_ptr(sys::ncclGetErrorString(result)) };
    format!("{} ({result:?})", text.to_string_lossy())
}
