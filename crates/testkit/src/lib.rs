//! Test support shared by Ember's crates.
//!
//! CI has no GPU, so the WGPU backend is tested on a software Vulkan driver: Mesa's lavapipe
//! (`apt-get install mesa-vulkan-drivers libvulkan1`), which burn selects as `WgpuDevice::Cpu`.
//! On a headless machine the driver prints `error: XDG_RUNTIME_DIR is invalid or not set` while
//! it looks for a Wayland display; that is harmless.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::wgpu::WgpuDevice;

/// Set to `1` to skip the WGPU tests on a machine without a software Vulkan driver.
pub const SKIP_WGPU_VAR: &str = "EMBER_SKIP_WGPU";

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
    if std::env::var(SKIP_WGPU_VAR).is_ok_and(|v| v == "1") {
        eprintln!("{SKIP_WGPU_VAR}=1: skipping this WGPU test");
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
/// fetch-assets` puts it), or `None` with a note that the test is skipped.
pub fn asset(relative: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EMBER_ASSETS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ember/assets"));
    let path = dir.join(relative);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} is missing (cargo xtask fetch-assets --with-weights)",
            path.display()
        );
        None
    }
}
