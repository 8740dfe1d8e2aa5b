//! Ember's CUDA C kernels (`src/kernels/`), compiled with NVRTC for the device's architecture
//! on first use and cached as a cubin under `~/.cache/ember/kernels`, keyed by the source, the
//! architecture and the NVRTC version: later runs load it in milliseconds.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;

use cudarc::driver::{result, sys};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::{CudaError, Result};

/// The sources in the order they are concatenated into one translation unit.
const SOURCES: [&str; 10] = [
    include_str!("kernels/common.cuh"),
    include_str!("kernels/norm.cu"),
    include_str!("kernels/rope.cu"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/loss.cu"),
    include_str!("kernels/attention_naive.cu"),
    include_str!("kernels/attention_flash.cu"),
    include_str!("kernels/attention_decode.cu"),
    include_str!("kernels/optimizer.cu"),
    include_str!("kernels/dequant.cu"),
];

pub struct Module {
    module: sys::CUmodule,
    functions: HashMap<&'static str, sys::CUfunction>,
}

impl Module {
    pub fn load(arch: (i32, i32)) -> Result<Self> {
        let source = SOURCES.join("\n");
        let arch_flag = format!("--gpu-architecture=sm_{}{}", arch.0, arch.1);
        let key = fnv1a(format!("{source}\n{arch_flag}\n{:?}", nvrtc_version()).as_bytes());
        let path = cache_dir().map(|dir| dir.join(format!("ember-cuda-{key:016x}.cubin")));
        let cubin = match path.as_ref().and_then(|p| std::fs::read(p).ok()) {
            Some(cubin) => cubin,
            None => {
                let started = std::time::Instant::now();
                let cubin = compile(&source, &arch_flag)?;
                tracing::info!(
                    "compiled Ember's CUDA kernels for sm_{}{} in {:.1} s",
                    arch.0,
                    arch.1,
                    started.elapsed().as_secs_f64()
                );
                if let Some(p) = &path {
                    // A cache that cannot be written only costs the next run a compile.
                    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::create_dir_all(p.parent().expect("a file in a directory")).is_ok()
                        && std::fs::write(&tmp, &cubin).is_ok()
                    {
                        let _ = std::fs::rename(&tmp, p);
                    }
                }
                cubin
            }
        };
        // SAFETY: a cubin NVRTC produced for this device's architecture.
        let module = unsafe { result::module::load_data(cubin.as_ptr().cast())? };
        Ok(Self {
            module,
            functions: HashMap::new(),
        })
    }

    /// The kernel `name`, allowed `shared` bytes of dynamic shared memory.
    pub fn function(&mut self, name: &'static str, shared: usize) -> Result<sys::CUfunction> {
        let f = match self.functions.get(name) {
            Some(&f) => f,
            None => {
                let c_name = CString::new(name).expect("kernel names have no NUL");
                // SAFETY: the module is loaded and lives as long as self.
                let f = unsafe { result::module::get_function(self.module, c_name)? };
                self.functions.insert(name, f);
                f
            }
        };
        if shared > 48 * 1024 {
            // SAFETY: f is a function of the loaded module.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared as i32,
                )?
            };
        }
        Ok(f)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        unsafe {
            let _ = result::module::unload(self.module);
        }
    }
}

fn compile(source: &str, arch_flag: &str) -> Result<Vec<u8>> {
    let fail = |what: &str, e: nvrtc::NvrtcError| CudaError::Compile(format!("{what}: {e:?}"));
    let src = CString::new(source).expect("kernel sources have no NUL");
    let program = nvrtc::create_program(&src, None).map_err(|e| fail("creating the program", e))?;
    let options = [arch_flag, "--std=c++17"];
    // SAFETY: program was created above and is destroyed once, below.
    let compiled = unsafe { nvrtc::compile_program(program, &options) };
    let out = match compiled {
        Ok(()) => cubin(program),
        Err(e) => {
            let log = unsafe { nvrtc::get_program_log(program) }
                .map(|chars| chars.iter().map(|&c| c as u8 as char).collect::<String>())
                .unwrap_or_default();
            Err(CudaError::Compile(format!("{e:?}\n{log}")))
        }
    };
    unsafe {
        let _ = nvrtc::destroy_program(program);
    }
    out
}

fn cubin(program: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: a compiled program; the buffer is sized from NVRTC's answer.
    unsafe {
        nvrtc_sys::nvrtcGetCUBINSize(program, &mut size)
            .result()
            .map_err(|e| CudaError::Compile(format!("{e:?}")))?;
        let mut out = vec![0u8; size];
        nvrtc_sys::nvrtcGetCUBIN(program, out.as_mut_ptr().cast())
            .result()
            .map_err(|e| CudaError::Compile(format!("{e:?}")))?;
        Ok(out)
    }
}

fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .ok()?;
    Some((major, minor))
}

fn cache_dir() -> Option<PathBuf> {
    let root = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(root.join("ember").join("kernels"))
}

/// FNV-1a: a stable hash for the cache key (std's hasher may change between Rust versions).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// The kernels compile with NVRTC for Ampere and Hopper (no GPU needed; the library comes
    /// from the reference Python environment): a kernel that does not compile fails here, in CI,
    /// before any device time is spent on it.
    #[test]
    fn kernels_compile_with_nvrtc() {
        let Some(python) = ember_testkit::reference_python() else {
            return;
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/check_kernels_compile.py");
        let out = Command::new(python).arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
