//! Choosing the backend at run time: CUDA, WGPU (Vulkan/Metal/DX12) or the CPU.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use burn::backend::cuda::CudaDevice;
use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Cuda, NdArray, Wgpu};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_cpu::CpuKernels;
use ember_cuda::{CudaBackend, CudaKernels};
use ember_trainer::kernels::{BurnKernels, TrainKernels};

/// `--device`: `auto`, `cuda[:N]`, `wgpu`, `wgpu:cpu` (a software adapter such as lavapipe) or `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cuda(usize),
    Wgpu,
    WgpuCpu,
    Cpu,
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            "wgpu" => Ok(Self::Wgpu),
            "wgpu:cpu" => Ok(Self::WgpuCpu),
            "cpu" => Ok(Self::Cpu),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device `{s}`; expected auto, cuda, cuda:N, wgpu, wgpu:cpu or cpu"
                )),
            },
        }
    }
}

impl DeviceArg {
    /// The device of the rank `local_rank` of a data-parallel run on this host: `cuda` (and
    /// `cuda:0`, `auto` where CUDA exists) mean that rank's own GPU, `cuda:LOCAL_RANK`, as
    /// torchrun scripts use it; a CPU or WGPU device is shared by the ranks.
    pub fn for_local_rank(self, local_rank: usize) -> Result<Self> {
        match self {
            Self::Cuda(0) => Ok(Self::Cuda(local_rank)),
            Self::Cuda(n) => bail!(
                "--device cuda:{n} names one GPU, but each rank of a data-parallel run uses its own \
                 (cuda:LOCAL_RANK): pass --device cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs"
            ),
            Self::Auto => Ok(match cuda_device_count() {
                Ok(n) if n > 0 => Self::Cuda(local_rank),
                _ => Self::Auto,
            }),
            other => Ok(other),
        }
    }
}

/// `--dtype`: the precision of the base model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    /// bf16 where the device supports it, else f32.
    Auto,
    Fixed(DType),
}

impl FromStr for DtypeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::Fixed(DType::F32)),
            "bf16" | "bfloat16" => Ok(Self::Fixed(DType::BF16)),
            "f16" | "float16" => Ok(Self::Fixed(DType::F16)),
            _ => Err(format!("unknown dtype `{s}`; expected auto, f32, bf16 or f16")),
        }
    }
}

/// Options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA, else a hardware WGPU adapter, else CPU), cuda[:N], wgpu, wgpu:cpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// auto (bf16 where supported, else f32), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: DtypeArg,
}

/// Work generic over the backend, run once the backend is chosen.
pub trait Task {
    type Output;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Self::Output>;
}

/// `--kernels`: what computes the layers and the loss of a training step or an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// Ember's CUDA kernels on a CUDA device (cuBLASLt, fused attention); on the CPU, burn's ops
    /// for training and Ember's CPU decoder for generation; burn's ops elsewhere.
    Auto,
    /// Ember's CUDA kernels; an error on other devices.
    Cuda,
    /// burn's ops on every device: the reference Ember's CUDA kernels and CPU decoder are
    /// checked against.
    Burn,
}

/// Training work, run once the backend and its kernels are chosen.
pub trait TrainTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<Self::Output>;
}

/// Runs `task` on the device `args` ask for with the kernels `kernels` asks for. On CUDA both
/// kernel sets run on burn's CUDA backend without fusion: Ember's replace what fusion would fuse,
/// and burn's training step under fusion gave a wrong loss on the real Gemma 3 270M in bf16
/// (7.1 at the first step where the pretrained model has 1.9) while the same ops unfused agree
/// with Ember's kernels there (`ember check-grads`; BENCHMARKS.md, 2026-12-02).
pub fn run_training_on<T: TrainTask>(args: &DeviceArgs, kernels: KernelChoice, task: T) -> Result<T::Output> {
    let chosen = choose(args.device)?;
    if !matches!(chosen, Chosen::Cpu) {
        keep_kernel_caches();
    }
    match (&chosen, kernels) {
        (Chosen::Cuda(i), KernelChoice::Auto | KernelChoice::Cuda) => {
            let dtype = resolve_dtype::<CudaBackend>(&chosen, &CudaDevice::new(*i), args.dtype)?;
            eprintln!("ember: layers and loss on Ember's CUDA kernels");
            task.run::<CudaBackend>(CudaDevice::new(*i), dtype, &CudaKernels::new())
        }
        (Chosen::Cuda(i), KernelChoice::Burn) => {
            let dtype = resolve_dtype::<CudaBackend>(&chosen, &CudaDevice::new(*i), args.dtype)?;
            task.run::<CudaBackend>(CudaDevice::new(*i), dtype, &BurnKernels)
        }
        (_, KernelChoice::Cuda) => bail!("--kernels cuda needs a CUDA device; {chosen} was chosen"),
        (Chosen::Wgpu(device), _) => {
            let dtype = resolve_dtype::<Wgpu>(&chosen, device, args.dtype)?;
            task.run::<Wgpu>(device.clone(), dtype, &BurnKernels)
        }
        (Chosen::Cpu, KernelChoice::Auto) => {
            let dtype = resolve_dtype::<NdArray>(&chosen, &Default::default(), args.dtype)?;
            task.run::<NdArray>(Default::default(), dtype, &CpuKernels)
        }
        (Chosen::Cpu, KernelChoice::Burn) => {
            let dtype = resolve_dtype::<NdArray>(&chosen, &Default::default(), args.dtype)?;
            task.run::<NdArray>(Default::default(), dtype, &BurnKernels)
        }
    }
}

enum Chosen {
    Cuda(usize),
    Wgpu(WgpuDevice),
    Cpu,
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chosen::Cuda(i) => write!(f, "CUDA device {i}"),
            Chosen::Wgpu(WgpuDevice::Cpu) => write!(f, "WGPU, software adapter"),
            Chosen::Wgpu(_) => write!(f, "WGPU, hardware adapter"),
            Chosen::Cpu => write!(f, "CPU (ndarray)"),
        }
    }
}

/// Runs `task` on the device `args` ask for, printing the choice to stderr.
pub fn run_on<T: Task>(args: &DeviceArgs, task: T) -> Result<T::Output> {
    let chosen = choose(args.device)?;
    if !matches!(chosen, Chosen::Cpu) {
        keep_kernel_caches();
    }
    match &chosen {
        Chosen::Cuda(i) => start::<Cuda, T>(&chosen, CudaDevice::new(*i), args.dtype, task),
        Chosen::Wgpu(device) => start::<Wgpu, T>(&chosen, device.clone(), args.dtype, task),
        Chosen::Cpu => start::<NdArray, T>(&chosen, Default::default(), args.dtype, task),
    }
}

fn start<B: Backend, T: Task>(chosen: &Chosen, device: B::Device, dtype: DtypeArg, task: T) -> Result<T::Output> {
    let dtype = resolve_dtype::<B>(chosen, &device, dtype)?;
    task.run::<B>(device, dtype)
}

/// The dtype `arg` asks for on `device`, or an error naming the ones it supports; reports the
/// choice.
fn resolve_dtype<B: Backend>(chosen: &Chosen, device: &B::Device, arg: DtypeArg) -> Result<DType> {
    let dtype = match arg {
        DtypeArg::Auto if B::supports_dtype(device, DType::BF16) => DType::BF16,
        DtypeArg::Auto => DType::F32,
        DtypeArg::Fixed(d) if B::supports_dtype(device, d) => d,
        // burn's WGPU backend has no bf16 (WGSL lacks it); f16 runs there where the adapter has it.
        DtypeArg::Fixed(d) if B::supports_dtype(device, DType::F16) => {
            bail!("{chosen} does not support {d:?}; use --dtype f16 or f32")
        }
        DtypeArg::Fixed(d) => bail!("{chosen} does not support {d:?}; use --dtype f32"),
    };
    eprintln!("ember: running on {chosen}, {}", dtype_name(dtype));
    Ok(dtype)
}

/// Keeps the GPU kernels one run compiles and tunes for the next: cubecl leaves its
/// compilation cache off and puts autotune results in a `target/` directory near the
/// working directory. Both go to `$XDG_CACHE_HOME/ember/kernels` (default
/// `~/.cache/ember/kernels`) unless a `cubecl.toml` chose otherwise.
fn keep_kernel_caches() {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let Some(root) = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache")))
    else {
        return;
    };
    let root = root.join("ember").join("kernels");
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if config.compilation.cache.is_none() {
        config.compilation.cache = Some(CacheConfig::File(root.clone()));
    }
    if matches!(config.autotune.cache, CacheConfig::Target) {
        config.autotune.cache = CacheConfig::File(root);
    }
    CubeClRuntimeConfig::set(config);
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

fn choose(arg: DeviceArg) -> Result<Chosen> {
    match arg {
        DeviceArg::Cpu => Ok(Chosen::Cpu),
        DeviceArg::Wgpu | DeviceArg::WgpuCpu => match wgpu_adapters() {
            (true, _) if arg == DeviceArg::Wgpu => Ok(Chosen::Wgpu(WgpuDevice::DefaultDevice)),
            (_, true) => Ok(Chosen::Wgpu(WgpuDevice::Cpu)),
            _ => bail!(
                "no {}WGPU adapter found: install a Vulkan driver (mesa-vulkan-drivers has a software one; \
                 VK_DRIVER_FILES must name it if set) or use --device cpu",
                if arg == DeviceArg::WgpuCpu { "software " } else { "" }
            ),
        },
        DeviceArg::Cuda(i) => {
            let count = cuda_device_count().context("CUDA is not available")?;
            if i >= count {
                bail!("CUDA device {i} does not exist: this machine has {count}");
            }
            Ok(Chosen::Cuda(i))
        }
        // WGPU's adapters are enumerated only without CUDA: probing Vulkan takes time and prints.
        DeviceArg::Auto => Ok(match cuda_device_count() {
            Ok(n) if n > 0 => Chosen::Cuda(0),
            _ if wgpu_adapters().0 => Chosen::Wgpu(WgpuDevice::DefaultDevice),
            _ => Chosen::Cpu,
        }),
    }
}

/// Number of CUDA devices, asking the driver library directly so that a machine without
/// one gets an error instead of a panic inside the backend.
fn cuda_device_count() -> Result<usize> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: libcuda's documented entry points, called with valid arguments; the library
    // stays loaded for the whole process (cubecl loads it again by name).
    unsafe {
        let lib = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"]
            .iter()
            .find_map(|name| libloading::Library::new(name).ok())
            .context("the NVIDIA driver library (libcuda) was not found")?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit\0")?;
        let count_fn: libloading::Symbol<CuDeviceGetCount> = lib.get(b"cuDeviceGetCount\0")?;
        let status = init(0);
        if status != 0 {
            bail!("cuInit failed with CUDA error {status}");
        }
        let mut count = 0;
        let status = count_fn(&mut count);
        if status != 0 {
            bail!("cuDeviceGetCount failed with CUDA error {status}");
        }
        std::mem::forget(lib);
        Ok(count.max(0) as usize)
    }
}

/// Whether WGPU sees (a hardware adapter, a software one).
fn wgpu_adapters() -> (bool, bool) {
    // Vulkan, Metal and DX12 only: probing the GL backend prints EGL errors on headless machines.
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(descriptor);
    let adapters = futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let software = |a: &wgpu::Adapter| a.get_info().device_type == wgpu::DeviceType::Cpu;
    (adapters.iter().any(|a| !software(a)), adapters.iter().any(software))
}
