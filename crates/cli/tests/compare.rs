//! `ember compare` passes a fixture model against its own transformers logits, fails a different
//! model against them, and names what is missing from a file that is not a reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

fn compare(model: &str, reference: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["compare", "--device", "cpu", "--model"])
        .arg(fixture(model))
        .arg("--reference")
        .arg(reference)
        .output()
        .unwrap()
}

#[test]
fn a_model_matches_its_reference_and_another_does_not() {
    let reference = fixture("gemma3").join("reference.safetensors");
    let same = compare("gemma3", &reference);
    let stdout = String::from_utf8_lossy(&same.stdout);
    assert!(
        same.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(
        stdout.contains("max |Δlogit|") && stdout.contains("through the KV cache"),
        "{stdout}"
    );

    let other = compare("gemma2", &reference);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("more than --tolerance"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_reference_is_refused_by_name() {
    let weights = fixture("gemma3").join("model.safetensors");
    let out = compare("gemma3", &weights);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("input_ids"),
        "{stderr}"
    );
}
