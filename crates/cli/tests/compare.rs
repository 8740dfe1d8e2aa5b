//! `ember compare` passes a fixture model against its own transformers logits, fails a different
//! model or one that computes NaN against them, and names what is missing from a file that is
//! not a reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

fn compare(model: &str, reference: &Path) -> Output {
    compare_dir(&fixture(model), reference)
}

fn compare_dir(model: &Path, reference: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["compare", "--device", "cpu", "--model"])
        .arg(model)
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

#[test]
fn a_model_that_computes_nan_fails() {
    // The fixture with a NaN final-norm weight: every logit is NaN.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("gemma3")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut data = view.data().to_vec();
            if name == "model.norm.weight" {
                data = data.chunks(4).flat_map(|_| f32::NAN.to_le_bytes()).collect();
            }
            (name, view.dtype(), view.shape().to_vec(), data)
        })
        .collect();
    let views = tensors.iter().map(|(name, dtype, shape, data)| {
        (
            name.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, &weights).unwrap();

    let out = compare_dir(dir.path(), &fixture("gemma3").join("reference.safetensors"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a NaN model passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("NaN"), "{stderr}");
}

/// The QLoRA round trip: the adapter Ember trained on bitsandbytes' NF4 checkpoint
/// (`fixtures/bnb4/qlora.toml`) gives, on the CPU, the logits PEFT computed with it on
/// transformers + bitsandbytes' load of the same checkpoint on an H200
/// (`fixtures/check_bnb4_peft.py`; 1.7e-6 measured here, 1.1e-6 on the GPU's CUDA kernels).
#[test]
fn a_qlora_adapter_gives_pefts_logits_on_the_same_4bit_base() {
    let bnb4 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bnb4");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["compare", "--device", "cpu", "--tolerance", "1e-4", "--model"])
        .arg(bnb4.join("models/gemma3-nf4"))
        .arg("--adapter")
        .arg(bnb4.join("adapter"))
        .arg("--reference")
        .arg(bnb4.join("adapter/peft_reference.safetensors"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("same top token at 34/34"), "{stdout}");
}
