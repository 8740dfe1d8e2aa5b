//! `ember generate`: the prompt from a file, and `--json` output with the token ids.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn generate(extra: &[&str]) -> Output {
    let model = repo().join("fixtures/models/gemma3");
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["generate", "--model", model.to_str().unwrap(), "--max-new-tokens", "6"])
        .args(["--device", "cpu", "--dtype", "f32"])
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_prompt_file_and_json_output_give_what_the_prompt_gives() {
    let dir = tempfile::tempdir().unwrap();
    let text = "The capital of\nFrance is";
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, text).unwrap();

    let streamed = stdout(&generate(&["--prompt", text]));
    assert_eq!(stdout(&generate(&["--prompt-file", file.to_str().unwrap()])), streamed);

    let json: serde_json::Value =
        serde_json::from_str(stdout(&generate(&["--prompt", text, "--json"])).trim()).unwrap();
    assert_eq!(json["prompt"], text);
    let new_text = json["text"].as_str().unwrap();
    assert_eq!(
        format!("{text}{new_text}\n"),
        streamed,
        "the JSON text is the streamed continuation"
    );
    let ids = json["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 6, "{json}");
    assert!(json["prompt_ids"].as_array().unwrap().len() > 1);
    assert!(json["tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_prompt_is_required_once() {
    let neither = generate(&[]);
    assert!(!neither.status.success());
    assert!(String::from_utf8_lossy(&neither.stderr).contains("--prompt"));
    let both = generate(&["--prompt", "a", "--prompt-file", "p.txt"]);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}
