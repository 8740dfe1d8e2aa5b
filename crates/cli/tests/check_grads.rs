//! `ember check-grads` on the CPU, where burn's kernels are the chosen ones: the command runs
//! end to end, a PEFT fixture's loss and gradients match PEFT's, and without an adapter the
//! check covers the seed recipe's adapter on all seven projections (not PEFT's default q/v).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The report `ember check-grads --device cpu ARGS` prints; fails the test if the command does.
fn check_grads(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["check-grads", "--device", "cpu", "--dtype", "f32"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-grads failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The tiny Gemma 3 fixture's decoder layers.
const LAYERS: u64 = 7;

#[test]
fn a_peft_fixture_matches_peft_loss_and_gradients() {
    let model = repo().join("fixtures/models/gemma3");
    let adapter = repo().join("fixtures/lora/plain");
    let report = check_grads(&[
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert_eq!(report["pass"], Value::Bool(true), "{report}");
    assert_eq!(report["grads"], LAYERS * 7 * 2, "{report}");
    let (loss, peft) = (report["loss"].as_f64().unwrap(), report["loss_peft"].as_f64().unwrap());
    assert!((loss - peft).abs() < 1e-5, "{report}");
    assert!(report["grad_rel_diff_peft_max"].as_f64().unwrap() < 1e-4, "{report}");
}

#[test]
fn without_an_adapter_the_seed_recipes_adapter_is_checked_on_every_projection() {
    let model = repo().join("fixtures/models/gemma3");
    let report = check_grads(&["--model", model.to_str().unwrap(), "--seq", "24"]);
    assert_eq!(report["pass"], Value::Bool(true), "{report}");
    // A and B of q, k, v, o, gate, up and down in every layer.
    assert_eq!(report["grads"], LAYERS * 7 * 2, "{report}");
    assert!(report["loss"].as_f64().unwrap().is_finite(), "{report}");
}

#[test]
fn with_lora_dropout_peft_is_not_compared_and_a_bad_rate_is_refused() {
    let model = repo().join("fixtures/models/gemma3");
    let adapter = repo().join("fixtures/lora/plain");
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ];
    let report = check_grads(&[&args[..], &["--lora-dropout", "0.1"]].concat());
    assert_eq!(report["pass"], Value::Bool(true), "{report}");
    assert_eq!(report["lora_dropout"], 0.1, "{report}");
    // PEFT's gradients were taken without dropout: comparing them would fail or mean nothing.
    assert!(report.get("loss_peft").is_none(), "{report}");
    let no_dropout = check_grads(&args);
    assert_ne!(report["loss"], no_dropout["loss"], "dropout changed nothing: {report}");

    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["check-grads", "--device", "cpu", "--lora-dropout", "1.5"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--lora-dropout 1.5"), "{stderr}");
}
