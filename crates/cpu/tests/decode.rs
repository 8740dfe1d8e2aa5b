//! Ember's CPU decoder against transformers' and PEFT's logits and against burn's ops (the
//! generic decoder), on the fixture checkpoints of every family it runs (f32).

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::DType;
use ember_cpu::{CpuDecoder, CpuKernels};
use ember_model::{
    DecodeStep, GemmaForCausalLM, GenerationConfig, LoadOptions, LogitsReference, ModelError, SamplingConfig, argmax,
    generate_with,
};
use ember_testkit::{max_abs_diff, read_f32};
use ember_trainer::kernels::TrainKernels;

type B = NdArray<f32>;

/// Gemma 1 (MQA; MHA with an untied head), Gemma 2 (soft-caps, sliding windows of 6 positions),
/// Gemma 3 (q/k norms, sliding windows of 6, two RoPE bases).
const MODELS: &[&str] = &["gemma-mqa", "gemma-mha-untied", "gemma2", "gemma3"];

/// Max |Δlogit| allowed, as for burn's ops against transformers in f32.
const TOLERANCE: f32 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures/models").join(name)
}

fn load(name: &str) -> GemmaForCausalLM<B> {
    GemmaForCausalLM::load(&fixture(name), &LoadOptions::new(DType::F32), &Default::default()).unwrap()
}

fn reference(name: &str) -> LogitsReference {
    LogitsReference::read(&fixture(name).join("reference.safetensors")).unwrap()
}

/// transformers' greedy continuation of the fixture's prompt (`reference.json`).
fn greedy_reference(name: &str) -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    (ids("greedy_prompt"), ids("greedy_new_tokens"))
}

fn decoder(model: &GemmaForCausalLM<B>, capacity: usize) -> CpuDecoder {
    CpuDecoder::new(model, 1, capacity).unwrap()
}

#[test]
fn cached_steps_give_transformers_logits() {
    for name in MODELS {
        let worst = reference(name)
            .compare_decoder(&mut decoder(&load(name), 20))
            .unwrap()
            .expect("the fixture batch has a row without padding");
        assert!(worst < TOLERANCE, "{name}: |Δlogit| {worst:e} against transformers");
    }
}

#[test]
fn each_step_gives_burns_logits_past_the_sliding_window() {
    for name in MODELS {
        let model = load(name);
        let (prompt, continuation) = greedy_reference(name);
        let capacity = prompt.len() + continuation.len();
        let device = Default::default();
        let (mut ours, mut burns) = (decoder(&model, capacity), model.decoder(capacity, &device));
        // The prompt in one step, then one token a step: 20 positions, windows of 6.
        let steps = std::iter::once(prompt.clone()).chain(continuation.iter().map(|&t| vec![t]));
        for (i, ids) in steps.enumerate() {
            let (got, want) = (ours.step(&ids).unwrap(), burns.step(&ids).unwrap());
            let worst = max_abs_diff(&got, &want);
            assert!(
                worst < TOLERANCE,
                "{name}, step {i}: |Δlogit| {worst:e} against burn's ops"
            );
            assert_eq!(argmax(&got), argmax(&want), "{name}, step {i}");
        }
    }
}

#[test]
fn greedy_generation_gives_transformers_tokens() {
    for name in MODELS {
        let model = load(name);
        let (prompt, expected) = greedy_reference(name);
        let config = GenerationConfig {
            max_new_tokens: expected.len(),
            stop_tokens: Vec::new(),
            sampling: SamplingConfig::default(),
        };
        let start = |capacity| CpuDecoder::new(&model, 1, capacity).map_err(|e| ModelError::Generation(e.to_string()));
        let tokens = generate_with(&model.config, &prompt, &config, start, |_| Ok(())).unwrap();
        assert_eq!(tokens, expected, "{name}");
    }
}

#[test]
fn lora_adapters_give_pefts_logits() {
    for case in ["plain", "rslora"] {
        let dir = repo().join("fixtures/lora").join(case);
        let (model, _) = ember_lora::load_adapter(load("gemma3"), &dir).unwrap();
        // PEFT's logits for the base's reference batch.
        let mut reference = reference("gemma3");
        let logits = read_f32(&dir.join("reference.safetensors"));
        reference.logits = logits.into_iter().find(|(n, _, _)| n == "logits").unwrap().2;
        let worst = reference.compare_decoder(&mut decoder(&model, 20)).unwrap().unwrap();
        assert!(worst < TOLERANCE, "{case}: |Δlogit| {worst:e} against PEFT");
        // The adapter moves the logits well past the tolerance: it is applied, not skipped.
        let base = reference
            .compare_decoder(&mut decoder(&load("gemma3"), 20))
            .unwrap()
            .unwrap();
        assert!(
            base > 100.0 * TOLERANCE,
            "{case}: the base model is only {base:e} from PEFT's logits"
        );
    }
}

#[test]
fn gemma3n_and_gemma4_are_left_to_burns_ops_with_the_reason() {
    for name in ["gemma3n", "gemma4", "gemma4-dense", "gemma4-moe"] {
        let model = load(name);
        let why = CpuDecoder::unsupported(&model).unwrap_or_else(|| panic!("{name} is refused"));
        assert!(why.contains("Gemma 1 to 3"), "{name}: {why}");
        assert!(CpuKernels.decoder(&model, 16, 4).is_none(), "{name}");
    }
    let model = load("gemma3");
    assert!(matches!(CpuKernels.decoder(&model, 16, 4), Some(Ok(_))));
}

#[test]
fn a_step_past_the_capacity_is_an_error() {
    let model = load("gemma3");
    let mut ours = decoder(&model, 4);
    ours.step(&[2, 10, 11]).unwrap();
    let error = ours.step(&[12, 13]).unwrap_err().to_string();
    assert!(error.contains("capacity of 4"), "{error}");
}

#[test]
fn decoding_sequences_together_gives_each_the_logits_it_gets_alone() {
    // Gemma 2 and 3 have sliding windows of 6: the sequences run past them, at different positions.
    for name in ["gemma2", "gemma3", "gemma-mqa"] {
        let model = load(name);
        let prompts: [&[u32]; 3] = [&[2, 10, 11, 12], &[2, 40], &[2, 7, 8, 9, 30, 31, 32]];
        let mut together = CpuDecoder::new(&model, prompts.len(), 32).unwrap();
        let mut alone: Vec<CpuDecoder> = prompts.iter().map(|_| decoder(&model, 32)).collect();
        for (row, prompt) in prompts.iter().enumerate() {
            let batched = ember_model::BatchDecodeStep::prefill(&mut together, row, prompt).unwrap();
            assert!(
                max_abs_diff(&batched, &alone[row].step(prompt).unwrap()) <= 1e-6,
                "{name} prefill {row}"
            );
        }
        for step in 0..9u32 {
            // Every step all rows, except the second sits out every third step.
            let tokens: Vec<(usize, u32)> = (0..prompts.len())
                .filter(|&row| row != 1 || step % 3 != 0)
                .map(|row| (row, 50 + step + row as u32))
                .collect();
            let batched = ember_model::BatchDecodeStep::step(&mut together, &tokens).unwrap();
            assert_eq!(batched.len(), tokens.len());
            for ((row, token), logits) in tokens.iter().zip(&batched) {
                let single = alone[*row].step(&[*token]).unwrap();
                assert!(max_abs_diff(logits, &single) <= 1e-6, "{name} step {step} row {row}");
            }
        }
    }
}
