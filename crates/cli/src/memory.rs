//! GPU memory, seen two ways: burn's allocator (what the run holds) and the driver
//! (`nvidia-smi`: everything on the card, CUDA context included), sampled for the peak.

use std::any::Any;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use burn::backend::cuda::CudaDevice;
use burn::backend::wgpu::WgpuDevice;
use cubecl::Runtime;
use ember_trainer::phases::Allocated;

/// What the allocator of the device's runtime holds; `None` on the CPU. The runtime is found
/// from the device's type, since the benchmark code is generic (an
/// [`ember_trainer::phases::MemoryProbe`]).
pub fn allocated(device: &dyn Any) -> Option<Allocated> {
    let usage = if let Some(d) = device.downcast_ref::<CudaDevice>() {
        cubecl::cuda::CudaRuntime::client(d).memory_usage().ok()?
    } else if let Some(d) = device.downcast_ref::<WgpuDevice>() {
        cubecl::wgpu::WgpuRuntime::client(d).memory_usage().ok()?
    } else {
        return None;
    };
    Some(Allocated {
        in_use: usage.bytes_in_use,
        reserved: usage.bytes_reserved,
    })
}

/// The most burn's allocator held before a release by Ember's CUDA kernels (0 elsewhere): a
/// peak within a step that a reading after it would miss.
pub fn reserved_seen(device: &dyn Any) -> u64 {
    match device.downcast_ref::<CudaDevice>() {
        Some(_) => ember_cuda::reserved_seen(),
        None => 0,
    }
}

/// Bytes in use on card `index` now, as the driver counts them (every process, CUDA contexts
/// included).
pub fn driver_used_bytes(index: usize) -> Option<u64> {
    used_mib(index).map(|mib| mib << 20)
}

/// Logs (at `EMBER_LOG=info`) what the device holds after a training step: burn's allocator
/// and the kernels' own memory (`kernels_own` bytes).
pub fn log_after_step(step: usize, device: &dyn Any, kernels_own: u64) {
    let Some(now) = allocated(device) else { return };
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    tracing::info!(
        "device memory after step {step}: {:.2} GiB in use and {:.2} GiB reserved by burn's allocator, \
         {:.2} GiB of the kernels' own",
        gib(now.in_use),
        gib(now.reserved),
        gib(kernels_own)
    );
}

/// Polls `nvidia-smi` for the card's used memory every 50 ms and keeps the maximum.
pub struct DriverPeak {
    peak_mib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DriverPeak {
    /// Starts polling card `index`; `None` when `nvidia-smi` cannot be run.
    pub fn start(index: usize) -> Option<Self> {
        used_mib(index)?;
        let peak_mib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak_mib, stop) = (peak_mib.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(used) = used_mib(index) {
                        peak_mib.fetch_max(used, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Some(Self {
            peak_mib,
            stop,
            thread: Some(thread),
        })
    }

    /// The highest used memory seen so far, in bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_mib.load(Ordering::Relaxed) << 20
    }
}

impl Drop for DriverPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn used_mib(index: usize) -> Option<u64> {
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .arg(format!("--id={index}"))
        .output()
        .ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}
