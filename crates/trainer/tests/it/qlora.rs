//! QLoRA on the CPU: training on a base loaded in 4 bits (`[model] load_in_4bit`), resumed
//! bit for bit, and its settings refused by name when wrong.

use std::path::Path;

use crate::common::{config_table, run};
use ember_trainer::config::RunConfig;
use ember_trainer::trainer::Start;

fn four_bit(out: &Path, steps: usize, keys: &[(&str, toml::Value)]) -> Result<RunConfig, String> {
    let mut table = config_table(out, steps, "adamw_8bit", true);
    let model = table["model"].as_table_mut().unwrap();
    model.insert("load_in_4bit".into(), true.into());
    for (key, value) in keys {
        model.insert(key.to_string(), value.clone());
    }
    table["training"]["save_steps"] = 2.into();
    RunConfig::from_table(table, Path::new("test.toml")).map_err(|e| e.to_string())
}

fn adapter(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn qlora_trains_on_the_quantized_base_and_resumes_bit_exactly() {
    let straight = tempfile::tempdir().unwrap();
    let losses = run(&four_bit(straight.path(), 4, &[]).unwrap(), Start::Fresh);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");

    // The base really is the 4-bit one: the first loss differs from the dense base's, by the
    // quantization error only.
    let dense_dir = tempfile::tempdir().unwrap();
    let mut dense = four_bit(dense_dir.path(), 1, &[]).unwrap();
    dense.model.load_in_4bit = false;
    let dense = run(&dense, Start::Fresh);
    assert_ne!(losses[0], dense[0]);
    assert!(
        (losses[0] - dense[0]).abs() < 0.05 * dense[0],
        "{} vs {}",
        losses[0],
        dense[0]
    );

    let interrupted = tempfile::tempdir().unwrap();
    run(&four_bit(interrupted.path(), 2, &[]).unwrap(), Start::Fresh);
    let checkpoint = interrupted.path().join("checkpoint-2");
    run(
        &four_bit(interrupted.path(), 4, &[]).unwrap(),
        Start::Resume(checkpoint),
    );
    assert_eq!(
        adapter(&straight.path().join("checkpoint-4")),
        adapter(&interrupted.path().join("checkpoint-4")),
        "the resumed adapter is bit-identical"
    );
}

#[test]
fn fp4_without_double_quantization_trains_too() {
    let out = tempfile::tempdir().unwrap();
    let config = four_bit(
        out.path(),
        2,
        &[
            ("bnb_4bit_quant_type", "fp4".into()),
            ("bnb_4bit_use_double_quant", false.into()),
        ],
    )
    .unwrap();
    let losses = run(&config, Start::Fresh);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
}

#[test]
fn bad_4bit_settings_are_refused_by_name() {
    let out = tempfile::tempdir().unwrap();
    for (key, value, expected) in [
        ("bnb_4bit_quant_type", toml::Value::from("int4"), "\"nf4\" or \"fp4\""),
        ("bnb_4bit_compute_dtype", "float64".into(), "is not a dtype"),
        ("llm_int8_skip_modules", vec!["lm_head["].into(), "not a valid pattern"),
    ] {
        let err = four_bit(out.path(), 1, &[(key, value)]).unwrap_err();
        assert!(err.contains(key) && err.contains(expected), "{key}: {err}");
    }
}
