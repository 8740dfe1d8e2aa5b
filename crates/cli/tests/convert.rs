//! `ember convert` writes a checkpoint directory that `ember generate` runs, and refuses a
//! broken input with a one-line error naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember")).args(args).output().unwrap()
}

#[test]
fn a_converted_gguf_generates_like_the_gguf_itself() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("tiny");
    let gguf = repo().join("fixtures/gguf/tiny-gemma3.gguf");
    let convert = ember(&[
        "convert",
        "--gguf",
        gguf.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    assert!(convert.status.success(), "{}", String::from_utf8_lossy(&convert.stderr));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(file).exists(), "{file}");
    }
    let generate = |model: &Path| {
        let run = ember(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "ab ab the",
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
            "--dtype",
            "f32",
        ]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        run.stdout
    };
    // The tiny model's random weights mostly pick control tokens, which print nothing; the
    // model tests compare the two paths' logits.
    assert_eq!(generate(&dir), generate(&gguf));
}

#[test]
fn a_file_that_is_not_gguf_is_refused_by_name() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("never");
    let readme = repo().join("README.md");
    let run = ember(&[
        "convert",
        "--gguf",
        readme.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("README.md") && stderr.contains("GGUF"), "{stderr}");
    assert!(!dir.exists(), "nothing is left behind");
    let leftovers: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "no temporary directory either: {leftovers:?}");
}
