//! Shared helpers for tests against the transformers fixtures in `fixtures/models/`.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use ember_model::{GemmaForCausalLM, GenerationConfig, LoadOptions, LogitsReference, ModelSource, SamplingConfig};

/// The backend of the CPU tests; the parity checks below take any backend, for the WGPU tests.
pub type B = NdArray<f32>;

/// Max |Δlogit| allowed against transformers in f32.
pub const TOLERANCE: f32 = 1e-4;

pub fn to_vec<Bk: Backend>(t: Tensor<Bk, 3>) -> Vec<f32> {
    t.cast(DType::F32).into_data().into_vec::<f32>().unwrap()
}

/// All fixture models, each made by `fixtures/make_fixtures.py`.
pub const MODELS: &[&str] = &[
    "gemma-mqa",
    "gemma-mha-untied",
    "gemma2",
    "gemma3",
    "gemma3n",
    "gemma4",
    "gemma4-dense",
    "gemma4-moe",
];

/// The fixtures whose architectures transformers 4.x wrote configs for (`config.transformers4.json`).
pub const MODELS_4X: &[&str] = &["gemma-mqa", "gemma-mha-untied", "gemma2", "gemma3"];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

pub fn load(dir: &Path) -> GemmaForCausalLM<B> {
    load_on(dir, &Default::default())
}

pub fn load_on<Bk: Backend>(dir: &Path, device: &Bk::Device) -> GemmaForCausalLM<Bk> {
    GemmaForCausalLM::load(dir, &LoadOptions::new(DType::F32), device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// The fixture's reference logits (`reference.safetensors`).
pub fn reference(name: &str) -> LogitsReference {
    LogitsReference::read(&fixture(name).join("reference.safetensors")).unwrap()
}

/// transformers' greedy continuation of the fixture's prompt (`reference.json`).
pub fn greedy_reference(dir: &Path) -> (Vec<u32>, Vec<u32>) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
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

/// A copy of a fixture checkpoint in a temp dir, to alter in tests.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// Full-sequence logits of the padded reference batch, compared at every real token.
pub fn assert_logits_match(dir: &Path, name: &str) {
    assert_logits_match_on::<B>(dir, name, &Default::default());
}

/// [`assert_logits_match`] on any backend.
pub fn assert_logits_match_on<Bk: Backend>(dir: &Path, name: &str, device: &Bk::Device) {
    let found = reference(name)
        .compare_full(&load_on::<Bk>(dir, device), device)
        .unwrap();
    assert!(
        found.max_abs_diff < TOLERANCE,
        "{name}: max |Δlogit| = {:e} exceeds {TOLERANCE:e}",
        found.max_abs_diff
    );
    assert_eq!(found.same_argmax, found.positions, "{name}: every top token agrees");
}

/// A row of the reference batch decoded through the KV cache, a 5-token prefix at once and then
/// one token per step, against transformers' full-sequence logits.
pub fn assert_cached_decoding_matches<Bk: Backend>(name: &str, device: &Bk::Device) {
    let model = load_on::<Bk>(&fixture(name), device);
    let worst = reference(name)
        .compare_cached(&model, device)
        .unwrap()
        .expect("the fixture batch has a row without padding");
    assert!(worst < TOLERANCE, "{name}: cached decoding differs by {worst:e}");
}

/// Greedy generation from the reference prompt yields transformers' tokens, each streamed once.
pub fn assert_greedy_generation_matches<Bk: Backend>(name: &str, device: &Bk::Device) {
    let dir = fixture(name);
    let model = load_on::<Bk>(&dir, device);
    let tokenizer = ModelSource::open(&dir).unwrap().tokenizer().unwrap();
    let (prompt, expected) = greedy_reference(&dir);
    let config = GenerationConfig {
        max_new_tokens: expected.len(),
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(),
    };
    let mut streamed = Vec::new();
    let tokens = model
        .generate(&prompt, &config, device, |t| {
            streamed.push(t);
            Ok(())
        })
        .unwrap();
    assert_eq!(tokens, expected, "{name}");
    assert_eq!(streamed, tokens, "{name}: every token is streamed once, in order");
}
