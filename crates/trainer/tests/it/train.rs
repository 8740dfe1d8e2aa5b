//! The training run end to end on the CPU: loss falls, a resumed run equals an
//! uninterrupted one bit for bit, and bad configs are refused by name.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::common::{AD, config, config_table, dropout_alone, repo, run};
use burn::tensor::DType;
use ember_data::DataConfig;
use ember_lora::LoraConfig;
use ember_model::gguf::{self, ConvertOptions};
use ember_trainer::config::{Offload, OptimKind, RunConfig, TrainingArgs};
use ember_trainer::kernels::BurnKernels;
use ember_trainer::trainer::{Start, train};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = ["adapter_model.safetensors", "optimizer.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn loss_falls_on_the_tiny_dataset() {
    let out = tempfile::tempdir().unwrap();
    let losses = run(&config(out.path(), 12, "adamw_torch", true), Start::Fresh);
    assert_eq!(losses.len(), 12);
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[9..].iter().sum::<f64>() / 3.0;
    assert!(last < first * 0.92, "loss did not fall: {losses:?}");
    let logged = |dir: &Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(logged(out.path()), 12);
    let mut again = config(out.path(), 2, "adamw_torch", true);
    again.training.overwrite_output_dir = true;
    run(&again, Start::Fresh);
    assert_eq!(logged(out.path()), 2, "a fresh run starts metrics.jsonl anew");
    for file in [
        "checkpoint-2/adapter_config.json",
        "checkpoint-2/trainer_state.json",
        "metrics.jsonl",
        "run_config.toml",
    ] {
        assert!(out.path().join(file).exists(), "{file}");
    }
}

#[test]
fn a_gguf_file_trains_as_its_converted_directory() {
    let gguf = repo().join("fixtures/gguf/tiny-gemma3.gguf");
    let converted = tempfile::tempdir().unwrap();
    // f32 keeps the dequantized weights exactly, so both runs see the same model and vocabulary.
    gguf::convert(&gguf, converted.path(), &ConvertOptions::new(DType::F32)).unwrap();
    let losses = |model: &Path| {
        let out = tempfile::tempdir().unwrap();
        let mut config = config(out.path(), 2, "adamw_torch", false);
        config.model.path = model.to_path_buf();
        run(&config, Start::Fresh)
    };
    assert_eq!(losses(&gguf), losses(converted.path()));
}

#[test]
fn resume_matches_uninterrupted_run() {
    for optim in ["adamw_torch", "adamw_8bit"] {
        let straight = tempfile::tempdir().unwrap();
        run(&config(straight.path(), 6, optim, true), Start::Fresh);

        let interrupted = tempfile::tempdir().unwrap();
        run(&config(interrupted.path(), 3, optim, true), Start::Fresh);
        let checkpoint = interrupted.path().join("checkpoint-3");
        run(&config(interrupted.path(), 6, optim, true), Start::Resume(checkpoint));

        let lines = std::fs::read_to_string(interrupted.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, 6, "{optim}: the resumed run appends to metrics.jsonl");
        assert_eq!(
            files(&straight.path().join("checkpoint-6")),
            files(&interrupted.path().join("checkpoint-6")),
            "{optim}: adapter and optimizer state are bit-identical"
        );
    }
}

#[test]
fn offloading_activations_changes_no_loss_and_no_adapter_bit() {
    let _alone = dropout_alone();
    let run_with = |offload: bool| {
        let out = tempfile::tempdir().unwrap();
        let mut config = config(out.path(), 3, "adamw_8bit", true);
        config.training.offload_activations = if offload { Offload::On } else { Offload::Off };
        config.lora.lora_dropout = 0.1;
        let losses: Vec<u64> = run(&config, Start::Fresh).iter().map(|l| l.to_bits()).collect();
        (losses, files(&out.path().join("checkpoint-3")))
    };
    assert_eq!(run_with(false), run_with(true));
}

#[test]
fn gemma_3n_and_4_train_and_resume_bit_exactly() {
    let _alone = dropout_alone();
    // Each text variant with adapters on the seven projections and dropout, checkpointed (the
    // explicit backward through shared keys and values, AltUp, experts), 4 steps straight or
    // 2 + 2 resumed.
    for model in ["gemma3n", "gemma4", "gemma4-dense", "gemma4-moe"] {
        let config = |out: &Path, steps: usize| {
            let mut table = config_table(out, steps, "adamw_8bit", true);
            table["model"]["path"] = repo().join("fixtures/models").join(model).display().to_string().into();
            let lora = table["lora"].as_table_mut().unwrap();
            let seven = [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ];
            lora.insert(
                "target_modules".into(),
                seven.iter().map(|s| s.to_string()).collect::<Vec<_>>().into(),
            );
            lora.insert("lora_dropout".into(), 0.1.into());
            table["training"]["save_steps"] = 2.into();
            RunConfig::from_table(table, Path::new("test.toml")).unwrap()
        };
        let straight = tempfile::tempdir().unwrap();
        let losses = run(&config(straight.path(), 4), Start::Fresh);
        assert!(losses.iter().all(|l| l.is_finite()), "{model}: {losses:?}");
        let interrupted = tempfile::tempdir().unwrap();
        run(&config(interrupted.path(), 2), Start::Fresh);
        let checkpoint = interrupted.path().join("checkpoint-2");
        run(&config(interrupted.path(), 4), Start::Resume(checkpoint));
        assert_eq!(
            files(&straight.path().join("checkpoint-4")),
            files(&interrupted.path().join("checkpoint-4")),
            "{model}: adapter and optimizer state are bit-identical"
        );
    }
}

#[test]
fn gemma_4_experts_adapters_train_and_resume_bit_exactly() {
    // `[lora] target_parameters`: adapters on the experts' 3-D weights (PEFT's ParamWrapper
    // format) beside attention's, through the explicit backward; 4 steps straight or 2 + 2.
    let config = |out: &Path, steps: usize| {
        let mut table = config_table(out, steps, "adamw_torch", true);
        table["model"]["path"] = repo().join("fixtures/models/gemma4-moe").display().to_string().into();
        let lora = table["lora"].as_table_mut().unwrap();
        let names = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>().into();
        lora.insert("target_modules".into(), names(&["q_proj", "v_proj"]));
        lora.insert(
            "target_parameters".into(),
            names(&["experts.gate_up_proj", "experts.down_proj"]),
        );
        table["training"]["save_steps"] = 2.into();
        RunConfig::from_table(table, Path::new("test.toml")).unwrap()
    };
    let straight = tempfile::tempdir().unwrap();
    let losses = run(&config(straight.path(), 4), Start::Fresh);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let interrupted = tempfile::tempdir().unwrap();
    run(&config(interrupted.path(), 2), Start::Fresh);
    let checkpoint = interrupted.path().join("checkpoint-2");
    run(&config(interrupted.path(), 4), Start::Resume(checkpoint));
    let trained = files(&straight.path().join("checkpoint-4"));
    assert_eq!(
        trained,
        files(&interrupted.path().join("checkpoint-4")),
        "adapter and optimizer state are bit-identical"
    );
    // B starts at zero: the experts' adapters moved, under PEFT's keys.
    let adapter = ember_testkit::read_f32(&straight.path().join("checkpoint-4/adapter_model.safetensors"));
    for key in ["experts.base_layer.lora_B.weight", "experts.lora_B.weight"] {
        let key = format!("base_model.model.model.layers.3.{key}");
        let (_, _, values) = adapter.iter().find(|(name, _, _)| *name == key).expect(&key);
        assert!(values.iter().any(|v| *v != 0.0), "{key} never trained");
    }
}

#[test]
fn a_resume_reports_changed_settings() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 3, "adamw_torch", false), Start::Fresh);
    let mut changed = config(out.path(), 4, "adamw_torch", false);
    changed.training.learning_rate = 1e-3;
    let summary = train::<AD>(
        &changed,
        Start::Resume(out.path().join("checkpoint-3")),
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap();
    assert_eq!(summary.steps, 4);
    assert_eq!(
        summary.resume_changes,
        ["training.max_steps: 3 -> 4", "training.learning_rate: 0.005 -> 0.001"],
    );
}

#[test]
fn a_checkpoint_for_another_model_is_refused() {
    let out = tempfile::tempdir().unwrap();
    run(&config(out.path(), 3, "adamw_torch", false), Start::Fresh);
    let mut other = config(out.path(), 6, "adamw_torch", false);
    other.model.path = repo().join("fixtures/models/gemma2");
    let err = train::<AD>(
        &other,
        Start::Resume(out.path().join("checkpoint-3")),
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("model: the checkpoint was trained on Gemma3"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused_by_name() {
    for (text, key) in [
        ("[training]\nlearning_rat = 1e-4\n[data]\npath = \"x\"", "learning_rat"),
        ("[trainig]\n[data]\npath = \"x\"", "trainig"),
        ("[lora]\nrank = 4\n[data]\npath = \"x\"", "rank"),
        ("[data]\npath = \"x\"\ncolumnz = 1", "columnz"),
    ] {
        let text = format!("{text}\n[model]\npath = \"m\"\n");
        let err = RunConfig::parse(&text, Path::new("bad.toml")).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn a_stop_request_saves_a_checkpoint_and_ends_the_run() {
    let out = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let summary = train::<AD>(
        &config(out.path(), 10, "adamw_torch", true),
        Start::Fresh,
        &Default::default(),
        DType::F32,
        &BurnKernels,
        &stop,
        |log| {
            if log.step == 2 {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        },
    )
    .unwrap();
    assert!(summary.interrupted);
    assert_eq!(summary.steps, 2);
    assert!(out.path().join("checkpoint-2/trainer_state.json").exists());
}

#[test]
fn a_config_built_in_code_is_the_config_of_the_same_file() {
    let file = RunConfig::parse(
        r#"
[model]
path = "models/gemma-2b-it"
[lora]
r = 16
lora_alpha = 16
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[data]
path = "train.jsonl"
[training]
max_steps = 10
optim = "adamw_8bit"
"#,
        Path::new("seed.toml"),
    )
    .unwrap();
    let training = TrainingArgs {
        max_steps: Some(10),
        optim: OptimKind::AdamW8bit,
        ..TrainingArgs::default()
    };
    let data = DataConfig::new("train.jsonl");
    let code = RunConfig::new(
        "models/gemma-2b-it",
        LoraConfig::seed_recipe(),
        data.clone(),
        training.clone(),
    )
    .unwrap();
    assert_eq!(code.model, file.model);
    assert_eq!(code.lora, file.lora);
    assert_eq!(code.data, file.data);
    assert_eq!(code.training, file.training);
    assert_eq!(code.resolved, file.resolved);

    let no_batch = TrainingArgs {
        per_device_train_batch_size: 0,
        ..training
    };
    let err = RunConfig::new("m", LoraConfig::default(), data, no_batch)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("per_device_train_batch_size"),
        "checked as a file is: {err}"
    );
}

#[test]
fn every_shipped_config_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "{seen} configs");
}

#[test]
fn a_lora_table_without_values_takes_the_defaults_of_lora_config_and_peft() {
    let file = RunConfig::parse(
        "[model]\npath = \"m\"\n[data]\npath = \"d\"\n[lora]\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(file.lora, LoraConfig::default());
    // peft.LoraConfig(): r=8, lora_alpha=8, lora_dropout=0.0, and for Gemma models
    // target_modules q_proj and v_proj.
    let peft = &file.resolved["lora"];
    assert_eq!(peft["r"].as_integer(), Some(8));
    assert_eq!(
        peft["lora_alpha"]
            .as_float()
            .or(peft["lora_alpha"].as_integer().map(|a| a as f64)),
        Some(8.0)
    );
    assert_eq!(peft["lora_dropout"].as_float(), Some(0.0));
    let targets: Vec<&str> = peft["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(targets, ["q_proj", "v_proj"]);
}
