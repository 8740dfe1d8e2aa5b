//! Test support shared by Ember's crates: the real assets, the software WGPU adapter, and
//! comparisons that NaN cannot pass.
//!
//! Two switches, the same in every crate: `EMBER_SKIP_ASSET_TESTS=1` skips the tests that need
//! real assets (`cargo xtask fetch-assets`), `EMBER_SKIP_WGPU=1` the WGPU tests. Without them a
//! missing asset or Vulkan driver fails the test and names the command that fixes it.
//!
//! CI has no GPU, so the WGPU backend is tested on a software Vulkan driver: Mesa's lavapipe
//! (`apt-get install mesa-vulkan-drivers libvulkan1`), which burn selects as `WgpuDevice::Cpu`.
//! On a headless machine the driver prints `error: XDG_RUNTIME_DIR is invalid or not set` while
//! it looks for a Wayland display; that is harmless.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::wgpu::WgpuDevice;

pub mod go_template;
pub mod llama_cpp;

/// Set to `1` to skip the WGPU tests on a machine without a software Vulkan driver.
pub const SKIP_WGPU_VAR: &str = "EMBER_SKIP_WGPU";

/// Set to `1` to skip the tests that need real assets.
pub const SKIP_ASSETS_VAR: &str = "EMBER_SKIP_ASSET_TESTS";

/// Whether `EMBER_SKIP_WGPU=1` asks to skip the WGPU tests (a test then returns early, saying so).
pub fn skip_wgpu() -> bool {
    let skip = std::env::var(SKIP_WGPU_VAR).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("{SKIP_WGPU_VAR}=1: skipping this WGPU test");
    }
    skip
}

/// The WGPU device of the software Vulkan adapter, or `None` when `EMBER_SKIP_WGPU=1` asks to
/// skip the WGPU tests (the test should then return early).
///
/// Autotune results are kept in `kernel_cache` (pass the test's `env!("CARGO_TARGET_TMPDIR")`):
/// on lavapipe tuning takes about a third of a cold run, and cubecl would otherwise write them
/// to a `target/` directory beside each crate's sources.
///
/// # Panics
///
/// When no software adapter exists and the tests are not skipped: a CI machine that lost its
/// driver must fail, not pass by running nothing.
pub fn software_wgpu(kernel_cache: &Path) -> Option<WgpuDevice> {
    if skip_wgpu() {
        return None;
    }
    match software_adapter(kernel_cache) {
        Some(name) => {
            eprintln!("WGPU test on the software adapter {name}");
            Some(WgpuDevice::Cpu)
        }
        None => panic!(
            "no software Vulkan adapter (Mesa's lavapipe) found, so the WGPU tests cannot run. Install one \
             (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`) or set {SKIP_WGPU_VAR}=1 to \
             skip these tests"
        ),
    }
}

/// The name of the first CPU-type Vulkan adapter, the kind `WgpuDevice::Cpu` selects, found
/// once per test binary; the kernel cache is set up the first time too, before burn reads
/// cubecl's settings.
fn software_adapter(kernel_cache: &Path) -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        keep_autotune_results(kernel_cache.join("cubecl"));
        // Asked of wgpu directly because burn panics, with a less helpful message, when there
        // is no adapter.
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(descriptor);
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
            .iter()
            .map(|adapter| adapter.get_info())
            .find(|info| info.device_type == wgpu::DeviceType::Cpu)
            .map(|info| info.name)
    })
    .as_deref()
}

/// Points cubecl's autotune cache at `dir` unless a `cubecl.toml` or `CUBECL_*` variable
/// already chose a place.
fn keep_autotune_results(dir: PathBuf) {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if matches!(config.autotune.cache, CacheConfig::Target) {
        config.autotune.cache = CacheConfig::File(dir);
    }
    CubeClRuntimeConfig::set(config);
}

/// A real asset at `$EMBER_ASSETS/<relative>` (default `~/.cache/ember/assets`, where `cargo xtask
/// fetch-assets` puts it). `None` only when `EMBER_SKIP_ASSET_TESTS=1` (the test should then return).
///
/// # Panics
///
/// When the asset is missing and asset tests are not skipped: a test must not pass by testing
/// nothing. The message names the command that fetches it.
pub fn asset(relative: &str) -> Option<PathBuf> {
    let path = assets_dir().join(relative);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var(SKIP_ASSETS_VAR).is_ok_and(|v| v == "1") {
        eprintln!(
            "{SKIP_ASSETS_VAR}=1: skipping this test ({} is missing)",
            path.display()
        );
        return None;
    }
    let fetch = if relative.starts_with("weights/") {
        "cargo xtask fetch-assets --with-weights"
    } else {
        "cargo xtask fetch-assets"
    };
    panic!(
        "test asset {} is missing: run `{fetch}` (or set {SKIP_ASSETS_VAR}=1 to skip the tests that need \
         real assets)",
        path.display()
    );
}

/// The Python interpreter with PyTorch, transformers and PEFT that reference checks run:
/// `$EMBER_PYTHON`, else the environment `cargo xtask fetch-assets --with-python` makes beside
/// the assets. `None` only when `EMBER_SKIP_ASSET_TESTS=1`.
///
/// # Panics
///
/// When there is none and asset tests are not skipped, naming the command that makes it.
pub fn reference_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("EMBER_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(python));
    }
    let python = assets_dir().join("python/bin/python");
    if python.is_file() {
        return Some(python);
    }
    if std::env::var(SKIP_ASSETS_VAR).is_ok_and(|v| v == "1") {
        eprintln!("{SKIP_ASSETS_VAR}=1: skipping this test (no reference Python environment)");
        return None;
    }
    panic!(
        "no Python with torch, transformers and peft at {}: run `cargo xtask fetch-assets --with-python` \
         (or point EMBER_PYTHON at one, or set {SKIP_ASSETS_VAR}=1 to skip the tests that need it)",
        python.display()
    );
}

fn assets_dir() -> PathBuf {
    std::env::var_os("EMBER_ASSETS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ember/assets"))
}

/// Every f32 tensor of a safetensors file: name, shape and values (fixtures, saved adapters).
pub fn read_f32(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(_, view)| view.dtype() == safetensors::Dtype::F32)
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect()
}

/// The largest |a − b| over two equally long slices; NaN when any difference is NaN, so that
/// `max_abs_diff(..) < tolerance` fails for a model that computes NaN (`f32::max` drops NaN).
///
/// # Panics
///
/// When the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, nan_max)
}

/// The larger of two values, NaN if either is: the fold for worst-case errors.
pub fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nan_difference_fails_every_tolerance() {
        let worst = super::max_abs_diff(&[1.0, f32::NAN, 3.0], &[1.0, 2.0, 3.0]);
        assert!(worst.is_nan(), "{worst}");
        assert_eq!(super::max_abs_diff(&[1.0, 2.5], &[1.0, 2.0]), 0.5);
    }
}
