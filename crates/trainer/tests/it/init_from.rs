//! `[lora] init_from`: a run starts from an existing PEFT adapter, and refuses `[lora]`
//! settings that contradict it.

use std::path::Path;

use crate::common::{config_table, dropout_alone, repo, run};
use ember_trainer::config::RunConfig;
use ember_trainer::trainer::Start;

/// The common run config with `[lora]` replaced by `lora` (TOML) and `changes` to `[training]`.
fn with_lora(out: &Path, lora: &str, training: &[(&str, toml::Value)]) -> ember_trainer::Result<RunConfig> {
    let mut table = config_table(out, 1, "adamw_torch", true);
    table.insert("lora".into(), toml::Value::Table(lora.parse().unwrap()));
    let t = table["training"].as_table_mut().unwrap();
    for (key, value) in training {
        t.insert(key.to_string(), value.clone());
    }
    RunConfig::from_table(table, Path::new("test.toml"))
}

fn plain() -> String {
    repo().join("fixtures/lora/plain").display().to_string()
}

/// The adapter file's tensors, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors = ember_testkit::read_f32(path);
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

#[test]
fn a_run_starts_from_the_adapter_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    // A learning rate too small to move any value: the first checkpoint holds the adapter the
    // run started from.
    let config = with_lora(
        dir.path(),
        &format!("init_from = {:?}\nlora_dropout = 0.1", plain()),
        &[
            ("learning_rate", toml::Value::Float(1e-30)),
            ("save_steps", toml::Value::Integer(1)),
        ],
    )
    .unwrap();
    assert_eq!(
        (config.lora.r, config.lora.lora_alpha, config.lora.lora_dropout),
        (4, 8.0, 0.1)
    );
    {
        let _alone = dropout_alone();
        run(&config, Start::Fresh);
    }

    let start = tensors(&repo().join("fixtures/lora/plain/adapter_model.safetensors"));
    let saved = tensors(&dir.path().join("checkpoint-1/adapter_model.safetensors"));
    assert_eq!(start.len(), saved.len());
    for ((name, _, a), (saved_name, _, b)) in start.iter().zip(&saved) {
        assert_eq!(name, saved_name);
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-12, "{name} moved by {worst}");
    }
    let resolved = std::fs::read_to_string(dir.path().join("run_config.toml")).unwrap();
    assert!(resolved.contains("init_from"), "{resolved}");
}

#[test]
fn settings_that_contradict_the_adapter_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |lora: String, expected: &[&str]| {
        let err = with_lora(dir.path(), &lora, &[]).unwrap_err().to_string();
        for part in expected {
            assert!(err.contains(part), "{err:?} lacks {part:?}");
        }
    };
    refused(
        format!("init_from = {:?}\nr = 8", plain()),
        &["[lora] r = 8", "(init_from) has r = 4", "remove `r`"],
    );
    refused(
        format!("init_from = {:?}\ntarget_modules = [\"q_proj\"]", plain()),
        &["target_modules", "gate_proj"],
    );
    refused(
        "init_from = \"/no/such/adapter\"".into(),
        &["[lora] init_from", "/no/such/adapter", "adapter_config.json"],
    );
    refused("init_from = 5".into(), &["[lora] init_from", "expected the path"]);

    // The adapter's own values, in any order, are accepted.
    let same = format!(
        "init_from = {:?}\nr = 4\nlora_alpha = 8\ntarget_modules = [\"v_proj\", \"q_proj\", \"k_proj\", \"o_proj\", \
         \"gate_proj\", \"up_proj\", \"down_proj\"]",
        plain()
    );
    with_lora(dir.path(), &same, &[]).unwrap();
}
