//! A run owns its output directory: no run deletes or resumes another's checkpoints, pruning
//! never removes the checkpoint just written, a resume states every setting that does not
//! match, and bad checkpoints or data are errors, not panics.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::common::{AD, config, config_table, repo, run};
use burn::tensor::DType;
use ember_data::Dataset;
use ember_model::{GemmaConfig, GemmaForCausalLM};
use ember_trainer::config::RunConfig;
use ember_trainer::eval::evaluate;
use ember_trainer::kernels::BurnKernels;
use ember_trainer::trainer::{Start, TrainSummary, train};
use ember_trainer::{Result, TrainError};

fn try_run(config: &RunConfig, start: Start) -> Result<TrainSummary> {
    train::<AD>(
        config,
        start,
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &AtomicBool::new(false),
        |_| {},
    )
}

fn with(output_dir: &Path, max_steps: usize, optim: &str, changes: &[(&str, &str, toml::Value)]) -> RunConfig {
    let mut table = config_table(output_dir, max_steps, optim, false);
    for (section, key, value) in changes {
        let section = table.get_mut(*section).and_then(toml::Value::as_table_mut).unwrap();
        section.insert(key.to_string(), value.clone());
    }
    RunConfig::from_table(table, Path::new("test.toml")).unwrap()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_fresh_run_refuses_a_directory_holding_another_runs_checkpoints() {
    let out = tempfile::tempdir().unwrap();
    let limit = [("training", "save_total_limit", toml::Value::Integer(2))];
    run(&with(out.path(), 12, "adamw_torch", &limit), Start::Fresh);
    assert_eq!(checkpoints(out.path()), ["checkpoint-12", "checkpoint-9"]);
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();

    // The same config again: it used to prune its own checkpoint-6 for the old run's 9 and 12.
    let err = try_run(&with(out.path(), 12, "adamw_torch", &limit), Start::Fresh)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint-12") && err.contains("--resume latest") && err.contains("overwrite_output_dir"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap(),
        metrics,
        "a refused run leaves the directory as it was"
    );

    let overwrite = [
        limit[0].clone(),
        ("training", "overwrite_output_dir", toml::Value::Boolean(true)),
    ];
    let summary = try_run(&with(out.path(), 6, "adamw_torch", &overwrite), Start::Fresh).unwrap();
    assert!(summary.last_checkpoint.join("adapter_model.safetensors").exists());
    assert_eq!(checkpoints(out.path()), ["checkpoint-3", "checkpoint-6"]);
}

#[test]
fn pruning_never_removes_the_checkpoint_just_written() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 12, "adamw_torch", false), Start::Fresh);
    // Back to step 3 with a limit of 2: checkpoint-6 is written again, and the old run's
    // later checkpoints (9, 12) are the ones to go.
    let limit = [("training", "save_total_limit", toml::Value::Integer(2))];
    let summary = try_run(
        &with(out.path(), 6, "adamw_torch", &limit),
        Start::Resume(out.path().join("checkpoint-3")),
    )
    .unwrap();
    assert_eq!(summary.last_checkpoint, out.path().join("checkpoint-6"));
    assert_eq!(checkpoints(out.path()), ["checkpoint-3", "checkpoint-6"]);
}

#[test]
fn resuming_a_run_that_reached_max_steps_ends_cleanly() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 3, "adamw_torch", false), Start::Fresh);
    for max_steps in [3, 2] {
        let summary = try_run(
            &config(out.path(), max_steps, "adamw_torch", false),
            Start::Resume(out.path().join("checkpoint-3")),
        )
        .unwrap();
        assert_eq!(summary.steps, 3);
        assert_eq!(summary.final_loss, None, "no step ran, so no loss");
        assert_eq!(summary.last_checkpoint, out.path().join("checkpoint-3"));
    }
    let lines = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
}

#[test]
fn a_resume_names_every_setting_that_does_not_match_the_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 3, "adamw_torch", false), Start::Fresh);
    let changed = with(
        out.path(),
        6,
        "adamw_8bit",
        &[
            ("lora", "r", toml::Value::Integer(8)),
            ("data", "max_seq_length", toml::Value::Integer(32)),
        ],
    );
    let err = try_run(&changed, Start::Resume(out.path().join("checkpoint-3")))
        .unwrap_err()
        .to_string();
    for part in ["lora.r: 4 -> 8", "data: ", "optim: AdamW -> AdamW8bit"] {
        assert!(err.contains(part), "`{part}` in {err}");
    }
}

#[test]
fn an_optimizer_state_for_another_adapter_is_an_error() {
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    run(&config(small.path(), 3, "adamw_8bit", false), Start::Fresh);
    run(
        &with(large.path(), 3, "adamw_8bit", &[("lora", "r", toml::Value::Integer(8))]),
        Start::Fresh,
    );
    std::fs::copy(
        large.path().join("checkpoint-3/optimizer.safetensors"),
        small.path().join("checkpoint-3/optimizer.safetensors"),
    )
    .unwrap();
    let err = try_run(
        &config(small.path(), 6, "adamw_8bit", false),
        Start::Resume(small.path().join("checkpoint-3")),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("optimizer.safetensors") && err.contains("another adapter"),
        "{err}"
    );
}

#[test]
fn a_resume_keeps_the_metrics_of_the_steps_it_continues() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 5, "adamw_torch", false), Start::Fresh);
    // Killed while writing step 6's line.
    let metrics = out.path().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":6,\"total_ste");
    std::fs::write(&metrics, text).unwrap();

    run(
        &config(out.path(), 6, "adamw_torch", false),
        Start::Resume(out.path().join("checkpoint-3")),
    );
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [1, 2, 3, 4, 5, 6],
        "steps 4 and 5 were redone, the torn line dropped"
    );
}

#[test]
fn leftovers_of_a_killed_checkpoint_write_are_cleaned_at_the_next_start() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 3, "adamw_torch", false), Start::Fresh);
    // What a process killed during a save leaves (a pid no process can have).
    let partial = out.path().join(".checkpoint-6.partial-4194321");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("adapter_config.json"), "{").unwrap();
    run(
        &config(out.path(), 4, "adamw_torch", false),
        Start::Resume(out.path().join("checkpoint-3")),
    );
    assert!(!partial.exists());
}

#[test]
fn token_ids_beyond_the_models_vocabulary_are_an_error() {
    // The fixture's tokenizer has 512 ids; a model with 256 cannot embed half of them.
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo().join("fixtures/models/gemma3");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut model_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    model_config["vocab_size"] = 256.into();
    std::fs::write(&config_path, model_config.to_string()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut run_config = config(out.path(), 2, "adamw_torch", false);
    run_config.model.path = dir.path().to_path_buf();
    let err = try_run(&run_config, Start::Fresh).unwrap_err();
    assert!(
        matches!(err, TrainError::TokenOutOfVocab { vocab_size: 256, .. }),
        "{err}"
    );

    let model = GemmaForCausalLM::<burn::backend::NdArray>::random(
        GemmaConfig::from_file(&config_path).unwrap(),
        DType::F32,
        None,
        &Default::default(),
    );
    let data = Dataset::from_samples([(vec![2, 17, 300, 1], vec![true; 4])]);
    let err = evaluate(&model, &BurnKernels, &data, 1, 0, 1).unwrap_err();
    assert!(err.to_string().contains("token id 300"), "{err}");
}
