//! `ember inspect` checks what it describes: a checkpoint whose tensors do not match its
//! config, or whose tokenizer is missing or too large, is refused with every problem named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/gemma3")
}

fn inspect(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("inspect")
        .arg(dir)
        .output()
        .unwrap()
}

/// A copy of the Gemma 3 fixture with `edit` applied to its config.json.
fn copy_with_config(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

fn problems_of(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("PROBLEM"))
        .map(|line| line.trim().to_owned())
        .collect()
}

#[test]
fn a_sound_checkpoint_is_described_and_checked() {
    let out = inspect(&fixture());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checked        every tensor's"), "{stdout}");
}

#[test]
fn gemma_3n_and_4_are_described_and_a_multimodal_checkpoint_s_towers_named() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    for (name, expected) in [
        (
            "gemma3n",
            vec![
                "Gemma3n",
                "altup          4 versions",
                "reuse the keys and values of layer(s) 2, 3",
            ],
        ),
        (
            "gemma4",
            vec![
                "Gemma4",
                "not loaded: model.audio_tower (",
                "model.vision_tower (",
                "per-layer      inputs of 8",
            ],
        ),
        (
            "gemma4-dense",
            vec!["values from the key projection", "0.25 of dims rotated"],
        ),
        ("gemma4-moe", vec!["experts        8 (top 2, intermediate 16)"]),
    ] {
        let out = inspect(&models.join(name));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("checked        every tensor's"), "{name}: {stdout}");
        for text in expected {
            assert!(stdout.contains(text), "{name}: no `{text}` in {stdout}");
        }
    }
}

#[test]
fn tensors_that_do_not_match_the_config_are_each_named() {
    let dir = copy_with_config(|config| config["intermediate_size"] = 96.into());
    let out = inspect(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let problems = problems_of(&out);
    // gate, up and down projections of each of the 7 layers.
    assert_eq!(problems.len(), 21, "{problems:#?}");
    assert!(
        problems[0].contains("`model.layers.0.mlp.gate_proj.weight`") && problems[0].contains("[128, 64]"),
        "{problems:#?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("21 problem(s)"));
}

#[test]
fn missing_and_left_over_layers_are_named() {
    let fewer = copy_with_config(|config| {
        config["num_hidden_layers"] = 6.into();
        config["layer_types"].as_array_mut().unwrap().pop();
    });
    let problems = problems_of(&inspect(fewer.path()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("tensor(s) the model does not use, e.g. `model.layers.6."),
        "{problems:#?}"
    );

    let more = copy_with_config(|config| {
        config["num_hidden_layers"] = 8.into();
        config["layer_types"]
            .as_array_mut()
            .unwrap()
            .push("full_attention".into());
    });
    let problems = problems_of(&inspect(more.path()));
    assert!(
        problems
            .iter()
            .all(|p| p.contains("is missing tensor `model.layers.7.")),
        "{problems:#?}"
    );
}

#[test]
fn a_missing_or_too_large_tokenizer_is_a_problem() {
    let dir = copy_with_config(|_| {});
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = inspect(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let problems = problems_of(&out);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("tokenizer.json"), "{problems:#?}");

    let small = copy_with_config(|config| config["vocab_size"] = 8.into());
    let problems = problems_of(&inspect(small.path()));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("but vocab_size is 8: ids from 8 on have no embedding row")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("`model.embed_tokens.weight`")),
        "{problems:#?}"
    );
}
