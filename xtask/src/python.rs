//! The reference Python environment: PyTorch, transformers and PEFT from PyPI in a virtual
//! environment beside the other assets, so that CI checks what Ember writes with the libraries
//! it claims to interoperate with (`crates/lora-adapter/tests/it/roundtrip.rs`).
//!
//! PyPI's Linux `torch` wheel is the CUDA build and pulls NVIDIA's runtime wheels: about 3 GB
//! to download once and 5.6 GB installed (measured 2026-12-01 on the 2-core CI machine: 15
//! minutes, 7 of them downloading at ~4 MB/s). It runs on the CPU without a GPU; PyTorch's
//! CPU-only wheels are served from its own index only, which the machines here cannot reach.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Pinned so that a cached environment is reused only while it is the one asked for.
pub const REQUIREMENTS: &[&str] = &["torch==2.15.0", "transformers==5.24.0", "peft==0.21.2"];

/// The environment's directory under the asset cache.
pub fn venv_dir(assets: &Path) -> PathBuf {
    assets.join("python")
}

/// The interpreter of the environment in `assets`, made (or remade, when the pins changed)
/// first. Returns at once when it is in place.
pub fn ensure(assets: &Path) -> Result<PathBuf> {
    let venv = venv_dir(assets);
    let python = venv.join("bin").join("python");
    let stamp = venv.join("ember-requirements.txt");
    let wanted = REQUIREMENTS.join("\n") + "\n";
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        println!("  ok       python/ ({})", REQUIREMENTS.join(", "));
        return Ok(python);
    }
    let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    println!(
        "  fetching {} into {} (about 3 GB from PyPI the first time) ...",
        REQUIREMENTS.join(", "),
        venv.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    let venv_arg = venv.to_string_lossy().into_owned();
    run(&base, &["-m", "venv", &venv_arg], "make a virtual environment")?;
    let python_arg = python.to_string_lossy().into_owned();
    let mut install = vec!["-m", "pip", "install", "--disable-pip-version-check", "--quiet"];
    install.extend_from_slice(REQUIREMENTS);
    run(&python_arg, &install, "install from PyPI (is pypi.org reachable?)")?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    println!("  ok       python/ (installed)");
    Ok(python)
}

fn run(program: &str, args: &[&str], what: &str) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run `{program}` to {what}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status}): could not {what}", args.join(" "));
    }
    Ok(())
}
