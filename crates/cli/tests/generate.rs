//! `ember generate`: the prompt from a file, `--json` output with the token ids, many prompts from a
//! JSON Lines file; and `ember warmup`, which runs a step and a generation.

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

#[test]
fn chat_asks_in_the_models_own_template() {
    // The fixture model with a chat template of Gemma's shape added to its tokenizer files.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gemma3-chat");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(repo().join("fixtures/models/gemma3")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let config_path = model.join("tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n\
        {{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        .into();
    std::fs::write(&config_path, config.to_string()).unwrap();

    let run = |model: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args([
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                " Hi there ",
                "--chat",
                "--json",
            ])
            .args(["--max-new-tokens", "2", "--device", "cpu", "--dtype", "f32"])
            .output()
            .unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(stdout(&run(&model)).trim()).unwrap();
    assert_eq!(
        json["prompt"],
        "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = json["prompt_ids"].as_array().unwrap();
    assert_eq!(ids.iter().filter(|&id| id == 2).count(), 1, "one <bos>: {ids:?}");

    let without = run(&repo().join("fixtures/models/gemma3"));
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("has no chat template"));
}

#[test]
fn a_prompts_file_gives_each_prompt_what_it_gives_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    let prompts = [
        "The capital of\nFrance is",
        "Once",
        "A much longer prompt, with a few more words in it",
    ];
    let lines = format!(
        "{}\n\n{}\n{}\n",
        serde_json::json!(prompts[0]),
        serde_json::json!({"prompt": prompts[1], "id": 7}),
        serde_json::json!(prompts[2])
    );
    std::fs::write(&file, lines).unwrap();
    // Sampling too: each row draws from its own sampler of the same seed.
    let sampling = ["--temperature", "0.9", "--seed", "3"];
    let out = generate(
        &[
            &["--prompts-file", file.to_str().unwrap(), "--batch-size", "2"],
            &sampling[..],
        ]
        .concat(),
    );
    let rows: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    for (row, prompt) in rows.iter().zip(prompts) {
        let alone: serde_json::Value =
            serde_json::from_str(stdout(&generate(&[&["--prompt", prompt, "--json"], &sampling[..]].concat())).trim())
                .unwrap();
        for key in ["prompt", "prompt_ids", "text", "token_ids", "stopped"] {
            assert_eq!(row[key], alone[key], "{key} of {prompt:?}");
        }
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 prompts"));
}

#[test]
fn a_bad_prompts_file_is_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    let refused = |lines: &str| {
        std::fs::write(&file, lines).unwrap();
        let out = generate(&["--prompts-file", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{lines:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let why = refused("\"fine\"\nnot json\n");
    assert!(why.contains("prompts.jsonl:2") && why.contains("not JSON"), "{why}");
    let why = refused("{\"text\": \"a\"}\n");
    assert!(
        why.contains("prompts.jsonl:1") && why.contains("no \"prompt\""),
        "{why}"
    );
    let why = refused("\n\n");
    assert!(why.contains("has no prompts"), "{why}");
}

#[test]
fn warmup_runs_a_step_and_a_generation() {
    let model = repo().join("fixtures/models/gemma3");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "warmup",
            "--arch",
            model.to_str().unwrap(),
            "--batch",
            "2",
            "--seq",
            "16",
        ])
        .args(["--device", "cpu", "--dtype", "f32"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("step  0:") && stderr.contains("ember warmup: done in"),
        "{stderr}"
    );
}
