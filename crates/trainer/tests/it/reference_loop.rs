//! The optimizer loop against transformers + PEFT + torch AdamW (fixture
//! `fixtures/make_train_fixtures.py`): per-step losses, gradient norms, learning rates and
//! the final adapter, with accumulation, clipping and a warmup schedule.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::DType;
use ember_lora::{adapter_tensors, load_adapter};
use ember_model::{GemmaForCausalLM, IGNORE_INDEX, LoadOptions, shift_labels};
use ember_trainer::grads::{Checkpointing, MicroBatch};
use ember_trainer::kernels::BurnKernels;
use ember_trainer::optim::{AdamW, AdamWConfig};
use ember_trainer::schedule::{Schedule, ScheduleKind};
use ember_trainer::step::{StepSettings, optimizer_step};
use safetensors::SafeTensors;

type AD = Autodiff<NdArray<f32>>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn optimizer_steps_match_transformers_peft_and_torch_adamw() {
    let dir = repo().join("fixtures/train");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let settings = &json["settings"];
    let (steps, accumulation) = (
        settings["steps"].as_u64().unwrap() as usize,
        settings["accumulation"].as_u64().unwrap() as usize,
    );
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> (Vec<i64>, Vec<usize>) {
        let view = reference.tensor(name).unwrap();
        (
            view.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            view.shape().to_vec(),
        )
    };
    let micro = |i: usize| {
        let (ids, shape) = ints(&format!("batch.{i}.input_ids"));
        let (mask, _) = ints(&format!("batch.{i}.attention_mask"));
        let (labels, _) = ints(&format!("batch.{i}.labels"));
        let targets = shift_labels(&labels, shape[1]);
        MicroBatch {
            batch: shape[0],
            seq: shape[1],
            input_ids: ids,
            segments: mask,
            positions: (0..shape[0]).flat_map(|_| 0..shape[1] as i64).collect(),
            num_trained_tokens: targets.iter().filter(|&&t| t != IGNORE_INDEX).count(),
            targets,
            seed: 0,
        }
    };

    let base = GemmaForCausalLM::<AD>::load(
        &repo().join("fixtures/models/gemma3"),
        &LoadOptions::new(DType::F32),
        &Default::default(),
    )
    .unwrap();
    let (mut model, _) = load_adapter(base, &repo().join("fixtures/lora/plain")).unwrap();
    let mut optimizer = AdamW::new(AdamWConfig {
        weight_decay: settings["weight_decay"].as_f64().unwrap(),
        ..AdamWConfig::default()
    });
    let schedule = Schedule {
        kind: ScheduleKind::Linear,
        peak_lr: settings["lr"].as_f64().unwrap(),
        warmup_steps: settings["warmup"].as_u64().unwrap() as usize,
        total_steps: steps,
    };
    let step_settings = StepSettings {
        max_grad_norm: settings["max_grad_norm"].as_f64(),
        checkpointing: Checkpointing::Layers { offload: false },
        profile: false,
        memory_probe: None,
    };
    for step in 0..steps {
        let window: Vec<MicroBatch> = (0..accumulation).map(|m| micro(step * accumulation + m)).collect();
        let lr = schedule.lr(step);
        let outcome;
        (model, outcome) = optimizer_step(model, &window, lr, step_settings, &BurnKernels, &mut optimizer).unwrap();
        let want = &json["log"][step];
        let close = |ours: f64, theirs: f64, tol: f64| (ours - theirs).abs() <= tol * theirs.abs().max(1e-12);
        assert!(
            close(lr, want["learning_rate"].as_f64().unwrap(), 1e-9),
            "step {step}: lr {lr} vs {}",
            want["learning_rate"]
        );
        assert!(
            close(outcome.loss, want["loss"].as_f64().unwrap(), 1e-5),
            "step {step}: loss {} vs {}",
            outcome.loss,
            want["loss"]
        );
        assert!(
            close(outcome.grad_norm, want["grad_norm"].as_f64().unwrap(), 1e-4),
            "step {step}: grad norm {} vs {}",
            outcome.grad_norm,
            want["grad_norm"]
        );
        assert!(
            outcome.grad_norm > settings["max_grad_norm"].as_f64().unwrap() || step > 0,
            "clipping is exercised"
        );
    }
    let mut worst: f32 = 0.0;
    for (key, (_, values)) in adapter_tensors(&model).unwrap() {
        let theirs: Vec<f32> = reference
            .tensor(&format!("final.{key}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        worst = ember_testkit::nan_max(worst, ember_testkit::max_abs_diff(&values, &theirs));
    }
    assert!(
        worst < 1e-5,
        "final adapter differs from PEFT + torch AdamW by {worst:e}"
    );
}
