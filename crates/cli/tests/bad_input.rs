//! Input that used to panic, be misread or refused ends in a clear message or does what its
//! name says: bench and check-grads sizes, absurd generation lengths, a resume with nothing
//! left to train, `ember eval --config`, and `ember export --merge` from a GGUF base.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(repo())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 1 is an error message; a panic exits with 101.
fn assert_refused(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stderr(out).contains(needle), "`{needle}` in {}", stderr(out));
}

#[test]
fn bench_refuses_an_empty_sequence() {
    let out = ember(&[
        "bench",
        "--arch",
        "fixtures/models/gemma3",
        "--device",
        "cpu",
        "--seq",
        "0",
    ]);
    assert_refused(&out, "--seq 0: must be at least 2");
}

#[test]
fn check_grads_refuses_a_sequence_without_a_target() {
    let out = ember(&[
        "check-grads",
        "--model",
        "fixtures/models/gemma3",
        "--device",
        "cpu",
        "--seq",
        "1",
    ]);
    assert_refused(&out, "--seq 1: must be at least 2");
}

#[test]
fn an_absurd_max_new_tokens_stops_at_the_models_context() {
    let out = ember(&[
        "generate",
        "--model",
        "fixtures/models/gemma3",
        "--device",
        "cpu",
        "--prompt",
        "Hi",
        "--max-new-tokens",
        &usize::MAX.to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_position_embeddings"), "{}", stderr(&out));
}

#[test]
fn resuming_a_finished_run_says_there_is_nothing_to_train() {
    let out_dir = tempfile::tempdir().unwrap();
    let set_dir = format!("training.output_dir={:?}", out_dir.path().display().to_string());
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--device", "cpu", "--config", "configs/quickstart.toml"];
        args.extend_from_slice(&["--set", "training.max_steps=2", "--set", "training.eval_steps=0"]);
        args.extend_from_slice(&["--set", &set_dir]);
        args.extend_from_slice(extra);
        ember(&args)
    };
    assert!(train(&[]).status.success());
    let again = train(&["--resume", "latest"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let message = stderr(&again);
    assert!(
        message.contains("nothing to train") && message.contains("checkpoint-2") && !message.contains("NaN"),
        "{message}"
    );
}

#[test]
fn eval_with_a_run_config_formats_the_data_as_the_run_did() {
    let dir = tempfile::tempdir().unwrap();
    // 16 samples: the debug binary evaluates slowly.
    let rows: String = std::fs::read_to_string(repo().join("datasets/tiny-instructions.jsonl"))
        .unwrap()
        .lines()
        .take(16)
        .map(|line| format!("{line}\n"))
        .collect();
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, rows).unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = \"fixtures/models/gemma3\"\n[data]\npath = {:?}\ntrain_on = \"completion\"\n\
             max_seq_length = 128\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let data = data.to_str().unwrap();
    let tokens = |args: &[&str]| -> u64 {
        let mut all = vec!["eval", "--device", "cpu", "--json", "--data", data];
        all.extend_from_slice(args);
        let out = ember(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["tokens"].as_u64().unwrap()
    };
    let every_token = tokens(&["--model", "fixtures/models/gemma3", "--max-seq-length", "128"]);
    let completion_only = tokens(&["--config", config.to_str().unwrap()]);
    assert!(
        completion_only < every_token,
        "train_on = completion counts only response tokens: {completion_only} vs {every_token}"
    );
}

#[test]
fn a_merged_export_from_a_gguf_base_is_a_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let export = ember(&[
        "export",
        "--device",
        "cpu",
        "--model",
        "fixtures/gguf/tiny-gemma3.gguf",
        "--adapter",
        "fixtures/lora/plain",
        "--merge",
        "--dtype",
        "f32",
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", stderr(&export));
    for file in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "model.safetensors",
    ] {
        assert!(merged.join(file).exists(), "{file}");
    }
    let generate = ember(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        merged.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "4",
    ]);
    assert!(generate.status.success(), "{}", stderr(&generate));
}

#[test]
fn numbers_out_of_range_are_refused_with_the_flag_or_key_the_value_and_the_range() {
    let generate = [
        "generate",
        "--model",
        "fixtures/models/gemma3",
        "--device",
        "cpu",
        "--prompt",
        "Hi",
    ];
    for (flag, value, range) in [
        ("--temperature", "-1", "must be a number of at least 0"),
        ("--temperature", "nan", "must be a number of at least 0"),
        ("--top-p", "1.5", "must be in (0, 1]"),
        ("--top-k", "0", "must be at least 1"),
        ("--max-new-tokens", "0", "must be at least 1"),
    ] {
        let out = ember(&[&generate[..], &[&format!("{flag}={value}")]].concat());
        // clap's usage errors exit with 2.
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("invalid value '{value}' for '{flag}")),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(range), "{}", stderr(&out));
    }
    let out = ember(&[
        "train",
        "--device",
        "cpu",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "training.learning_rate=-5e-4",
    ]);
    assert_refused(
        &out,
        "configs/quickstart.toml`: [training] learning_rate = -0.0005: must be a number above 0",
    );
}
