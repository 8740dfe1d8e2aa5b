//! `ember export --merge` writes the same bf16 checkpoint from the WGPU backend (whose software
//! adapter has no bf16: the rounding happens on the host) as from the CPU, up to the last bit
//! where the two backends' f32 sums round differently.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every tensor of the export as bf16 bit patterns, by name.
fn export_merged(device: &str, out: &Path) -> Vec<(String, Vec<u16>)> {
    let run = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["export", "--merge", "--dtype", "bf16", "--device", device, "--model"])
        .arg(repo().join("fixtures/models/gemma3"))
        .arg("--adapter")
        .arg(repo().join("fixtures/lora/plain"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{device}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{name}");
            let bits = view.data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
            (name, bits.collect())
        })
        .collect();
    tensors.sort();
    tensors
}

#[test]
fn a_merged_bf16_export_is_the_same_from_wgpu_and_the_cpu() {
    if ember_testkit::skip_wgpu() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let cpu = export_merged("cpu", &out.path().join("cpu"));
    let wgpu = export_merged("wgpu:cpu", &out.path().join("wgpu"));
    assert_eq!(cpu.len(), wgpu.len());
    let (mut values, mut equal) = (0, 0);
    for ((name, a), (_, b)) in cpu.iter().zip(&wgpu) {
        for (x, y) in a.iter().zip(b) {
            // Same sign, at most one bf16 step apart.
            assert!(
                x >> 15 == y >> 15 && x.abs_diff(*y) <= 1,
                "{name}: {x:#06x} vs {y:#06x}"
            );
            equal += usize::from(x == y);
        }
        values += a.len();
    }
    assert!(equal as f64 > 0.99 * values as f64, "{equal} of {values} values equal");
}
