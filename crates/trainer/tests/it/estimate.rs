//! The memory estimate: its counts against a loaded model, `offload_activations`' values, and a
//! run that cannot fit refused before anything is loaded or written.

use std::sync::atomic::AtomicBool;

use crate::common::{AD, config, config_table};
use burn::backend::NdArray;
use burn::tensor::DType;
use ember_lora::{adapter_parameter_count, add_lora};
use ember_model::{GemmaForCausalLM, LoadOptions, ModelSource, named_params};
use ember_trainer::TrainError;
use ember_trainer::config::{Offload, RunConfig};
use ember_trainer::estimate::{MemoryEstimate, plan};
use ember_trainer::grads::MicroBatch;
use ember_trainer::kernels::{BatchKernels, BurnKernels, Favour, TrainKernels};
use ember_trainer::trainer::{Start, train};

type B = NdArray<f32>;

/// burn's kernels on a device with `free` bytes.
struct Tight(u64);

impl TrainKernels<B> for Tight {
    fn name(&self) -> &'static str {
        "tight"
    }

    fn unsupported(&self, _model: &GemmaForCausalLM<B>) -> Option<String> {
        None
    }

    fn free_bytes(&self, _device: &burn::backend::ndarray::NdArrayDevice) -> Option<u64> {
        Some(self.0)
    }

    fn prepare<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<B>,
        batch: &MicroBatch,
        favour: Favour,
    ) -> ember_trainer::Result<Box<dyn BatchKernels<B> + 'a>> {
        BurnKernels.prepare(model, batch, favour)
    }
}

fn estimate_of(config: &RunConfig, kernels: &dyn TrainKernels<B>) -> (bool, MemoryEstimate) {
    let source = ModelSource::open(&config.model.path).unwrap();
    let plan = plan(config, source.config(), &Default::default(), DType::F32, kernels).unwrap();
    (plan.offload, plan.estimate)
}

#[test]
fn weights_and_adapters_are_counted_as_loaded() {
    let out = tempfile::tempdir().unwrap();
    for optim in ["adamw_torch", "adamw_8bit"] {
        let config = config(out.path(), 1, optim, true);
        let (_, estimate) = estimate_of(&config, &BurnKernels);
        let source = ModelSource::open(&config.model.path).unwrap();
        let model = source
            .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
            .unwrap();
        let weights: usize = named_params(&model)
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        assert_eq!(estimate.weights, 4 * weights as u64, "{optim}");
        let adapters = adapter_parameter_count(&add_lora(model, &config.lora, 0).unwrap()) as f64;
        let state = if optim == "adamw_torch" { 8.0 } else { 2.0 + 8.0 / 256.0 };
        assert_eq!(estimate.adapters, (adapters * (8.0 + state)) as u64, "{optim}");
        // 4 samples of 64 tokens, hidden 64, f32, for each of the fixture's layers.
        let layers = source.config().num_hidden_layers() as u64;
        let hidden = source.config().hidden_size as u64;
        assert_eq!(estimate.saved_inputs, layers * 4 * 64 * hidden * 4);
        assert!(estimate.step > 0);
    }
}

#[test]
fn expert_adapters_are_counted_as_loaded() {
    let out = tempfile::tempdir().unwrap();
    let mut table = config_table(out.path(), 1, "adamw_torch", true);
    table["model"]["path"] = crate::common::repo()
        .join("fixtures/models/gemma4-moe")
        .display()
        .to_string()
        .into();
    let lora = table["lora"].as_table_mut().unwrap();
    lora.insert("target_modules".into(), toml::Value::Array(Vec::new()));
    let experts = ["experts.gate_up_proj", "experts.down_proj"].map(toml::Value::from);
    lora.insert("target_parameters".into(), toml::Value::Array(experts.to_vec()));
    let ranks = toml::Table::from_iter([("experts.down_proj".to_string(), toml::Value::from(2))]);
    lora.insert("rank_pattern".into(), ranks.into());
    let config = RunConfig::from_table(table, std::path::Path::new("test.toml")).unwrap();
    let (_, estimate) = estimate_of(&config, &BurnKernels);
    let model = ModelSource::open(&config.model.path)
        .unwrap()
        .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
        .unwrap();
    let adapters = adapter_parameter_count(&add_lora(model, &config.lora, 0).unwrap()) as f64;
    assert!(adapters > 0.0);
    assert_eq!(estimate.adapters, (adapters * 16.0) as u64);
}

#[test]
fn offload_activations_takes_true_false_or_auto() {
    let out = tempfile::tempdir().unwrap();
    for (value, expected) in [
        ("true", Offload::On),
        ("false", Offload::Off),
        ("\"auto\"", Offload::Auto),
    ] {
        let mut table = config_table(out.path(), 1, "adamw_torch", true);
        let training = table["training"].as_table_mut().unwrap();
        training.insert(
            "offload_activations".into(),
            toml::from_str::<toml::Table>(&format!("v = {value}")).unwrap()["v"].clone(),
        );
        let config = RunConfig::from_table(table, std::path::Path::new("run.toml")).unwrap();
        assert_eq!(config.training.offload_activations, expected);
    }
    let mut table = config_table(out.path(), 1, "adamw_torch", true);
    table["training"]
        .as_table_mut()
        .unwrap()
        .insert("offload_activations".into(), "yes".into());
    let err = RunConfig::from_table(table, std::path::Path::new("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("offload_activations") && err.contains("auto"), "{err}");
}

#[test]
fn auto_offloads_only_when_the_run_would_not_fit() {
    let out = tempfile::tempdir().unwrap();
    let config = config(out.path(), 1, "adamw_torch", true);
    let (offload, kept) = estimate_of(&config, &Tight(u64::MAX));
    assert!(!offload);
    // Room for the run with its inputs offloaded, not with them kept.
    let (offload, offloaded) = estimate_of(&config, &Tight(kept.total() - 1));
    assert!(offload);
    assert!(offloaded.total() < kept.total());
    // Without a free-memory figure (burn's kernels on the CPU), auto keeps them.
    assert!(!estimate_of(&config, &BurnKernels).0);
}

#[test]
fn a_run_that_cannot_fit_is_refused_before_anything_is_written() {
    let out = tempfile::tempdir().unwrap();
    let run_dir = out.path().join("run");
    let config = config(&run_dir, 1, "adamw_torch", true);
    let err = train::<AD>(
        &config,
        Start::Fresh,
        &Default::default(),
        DType::F32,
        &Tight(1 << 20),
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::DoesNotFit { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("per_device_train_batch_size") && message.contains("offload_activations"),
        "{message}"
    );
    assert!(!run_dir.exists(), "the output directory was created");
}
