//! The seed-recipe examples run from a fresh clone, on the tiny model and dataset that ship
//! with Ember: `load`, `lora` and `data` as they are, `train` for one step and `ask` with its
//! adapter.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a built example from the repository root (where its default paths point) and returns
/// its standard output, failing the test with its standard error if it fails.
fn run(name: &str, args: &[&str]) -> String {
    // Cargo puts examples in `<target>/<profile>/examples/`, beside this test's `deps/`, and
    // `cargo test` builds them before running any test.
    let test = std::env::current_exe().unwrap();
    let profile_dir = test.parent().and_then(Path::parent).unwrap();
    let path = profile_dir
        .join("examples")
        .join(name)
        .with_extension(std::env::consts::EXE_EXTENSION);
    assert!(
        path.exists(),
        "{} is not built: `cargo test` builds the examples, unless targets are named (then add --examples)",
        path.display()
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(&path).args(args).current_dir(repo).output().unwrap();
    assert!(
        output.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn load_reads_the_checkpoint_and_tokenizer() {
    let out = run("load", &[]);
    assert!(out.contains("Gemma3: 7 layers"), "{out}");
    assert!(
        out.contains("-> \"Write the word backwards.\""),
        "the tokenizer round-trips: {out}"
    );
}

#[test]
fn lora_counts_the_trainable_parameters() {
    let out = run("lora", &[]);
    // r · (in + out) summed over the seven projections, 16384 a layer, 7 layers.
    assert!(out.contains("trainable params: 114688 ||"), "{out}");
}

#[test]
fn data_shows_a_formatted_sample_and_its_labels() {
    let out = run("data", &[]);
    assert!(out.contains("### Response:\n46 + 33 = 79.\n<eos>]]"), "{out}");
    assert!(out.contains("labels    [-100, "), "BOS carries no loss: {out}");
    let completion = run("data", &["--completion-only"]);
    assert!(
        completion.contains("### Response:\n[[46 + 33 = 79.\n<eos>]]"),
        "{completion}"
    );
}

#[test]
fn train_saves_an_adapter_that_ask_loads() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    run("train", &["--max-steps", "1", "--output-dir", dir]);
    let adapter: PathBuf = out.path().join("adapter");
    let answer = run(
        "ask",
        &["--adapter", adapter.to_str().unwrap(), "--max-new-tokens", "4"],
    );
    assert!(
        answer.starts_with(&ember_data::alpaca_seed_prompt("Write the word backwards.", "garden")),
        "{answer}"
    );
}
