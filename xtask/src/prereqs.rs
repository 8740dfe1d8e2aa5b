//! What `cargo xtask test` needs from the machine besides Rust: npm and pip (the asset
//! downloads), Python's venv (the reference environment) and, unless `EMBER_SKIP_WGPU=1`, Mesa's
//! lavapipe software Vulkan driver (the WGPU tests). Whatever is missing is installed with
//! Debian's apt-get where that is possible (as root, or through password-less sudo); otherwise
//! the run stops at once with the command to run.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

/// A missing prerequisite and the Debian packages that bring it.
struct Missing {
    what: &'static str,
    packages: &'static [&'static str],
}

/// Installs what is missing; `skip_wgpu` and `skip_assets` (the tests' switches) leave out
/// the driver and the download tools.
pub fn ensure(skip_wgpu: bool, skip_assets: bool) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut missing = Vec::new();
    if !skip_assets && !works("npm", &["--version"]) {
        missing.push(Missing {
            what: "npm",
            packages: &["npm"],
        });
    }
    if !skip_assets && !works(&python, &["-m", "pip", "--version"]) {
        missing.push(Missing {
            what: "pip",
            packages: &["python3-pip"],
        });
    }
    // Debian's python3 makes environments only with its venv package (ensurepip).
    if !skip_assets && !works(&python, &["-c", "import ensurepip, venv"]) {
        missing.push(Missing {
            what: "Python's venv",
            packages: &["python3-venv"],
        });
    }
    if !skip_wgpu && !have_lavapipe() {
        missing.push(Missing {
            what: "Mesa's lavapipe (a software Vulkan driver for the WGPU tests)",
            packages: &["mesa-vulkan-drivers", "libvulkan1"],
        });
    }
    if missing.is_empty() {
        return Ok(());
    }
    let whats: Vec<&str> = missing.iter().map(|m| m.what).collect();
    let packages: Vec<&str> = missing.iter().flat_map(|m| m.packages.iter().copied()).collect();
    let install = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    let sudo = match (is_root(), works("sudo", &["-n", "true"])) {
        (true, _) => "",
        (false, true) => "sudo ",
        (false, false) => bail!(
            "missing: {}. Install them with `sudo apt-get update && sudo {install}` (or your system's \
             packages of the same), then run `cargo xtask test` again{}",
            whats.join(", "),
            wgpu_hint(skip_wgpu)
        ),
    };
    if !works("apt-get", &["--version"]) {
        bail!(
            "missing: {}, and this system has no apt-get: install them with its package manager{}",
            whats.join(", "),
            wgpu_hint(skip_wgpu)
        );
    }
    println!("installing {} ({sudo}{install})", whats.join(", "));
    apt(sudo, &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&packages);
    apt(sudo, &args)
}

fn wgpu_hint(skip_wgpu: bool) -> &'static str {
    if skip_wgpu {
        ""
    } else {
        " (EMBER_SKIP_WGPU=1 skips the WGPU tests and their driver)"
    }
}

fn apt(sudo: &str, args: &[&str]) -> Result<()> {
    let mut command = if sudo.is_empty() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    let status = command.args(args).env("DEBIAN_FRONTEND", "noninteractive").status()?;
    if !status.success() {
        bail!("`{sudo}apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Whether `program args` runs and succeeds, quietly.
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The Vulkan loader and lavapipe's driver manifest, where Debian installs them.
fn have_lavapipe() -> bool {
    let loader = ["ldconfig", "/sbin/ldconfig"].iter().any(|ldconfig| {
        Command::new(ldconfig)
            .arg("-p")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("libvulkan.so.1"))
    });
    let driver = std::fs::read_dir(Path::new("/usr/share/vulkan/icd.d")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
    });
    loader && driver
}
