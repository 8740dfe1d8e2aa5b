//! Shared helpers for tests against the transformers fixtures in `fixtures/models/`.

#![allow(dead_code)] // each test binary uses a subset

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use ember_model::{
    AttentionMask, ForwardInput, GemmaForCausalLM, GemmaTokenizer, GenerationConfig, LoadOptions, SamplingConfig,
};
use safetensors::SafeTensors;

/// The backend of the CPU tests; the parity checks below take any backend, for the WGPU tests.
pub type B = NdArray<f32>;

/// Max |Δlogit| allowed against transformers in f32.
pub const TOLERANCE: f32 = 1e-4;

pub fn to_vec<Bk: Backend>(t: Tensor<Bk, 3>) -> Vec<f32> {
    t.cast(DType::F32).into_data().into_vec::<f32>().unwrap()
}

/// All fixture models, each made by `fixtures/make_fixtures.py`.
pub const MODELS: &[&str] = &["gemma-mqa", "gemma-mha-untied", "gemma2", "gemma3"];

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

/// What transformers computed for a padded batch of two sequences.
pub struct Reference {
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub logits: Vec<f32>,
    pub greedy_prompt: Vec<u32>,
    pub greedy_new_tokens: Vec<u32>,
}

impl Reference {
    pub fn read(dir: &Path) -> Self {
        let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let ints = |name: &str| -> Vec<i64> {
            st.tensor(name)
                .unwrap()
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let logits_view = st.tensor("logits").unwrap();
        let [batch, seq, vocab] = logits_view.shape().try_into().unwrap();
        let logits = logits_view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
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
        Self {
            batch,
            seq,
            vocab,
            input_ids: ints("input_ids"),
            attention_mask: ints("attention_mask"),
            logits,
            greedy_prompt: ids("greedy_prompt"),
            greedy_new_tokens: ids("greedy_new_tokens"),
        }
    }

    /// Reference logits of one position.
    pub fn logits_at(&self, row: usize, pos: usize) -> &[f32] {
        let start = (row * self.seq + pos) * self.vocab;
        &self.logits[start..start + self.vocab]
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
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
    let model = load_on::<Bk>(dir, device);
    let r = Reference::read(&fixture(name));
    let ids = Tensor::<Bk, 1, Int>::from_data(r.input_ids.as_slice(), device).reshape([r.batch, r.seq]);
    let segments = Tensor::<Bk, 1, Int>::from_data(r.attention_mask.as_slice(), device).reshape([r.batch, r.seq]);
    let positions = Tensor::<Bk, 1, Int>::arange(0..r.seq as i64, device)
        .reshape([1, r.seq])
        .expand([r.batch, r.seq]);
    let input = ForwardInput {
        input_ids: ids,
        positions,
        mask: AttentionMask::with_segments(segments),
    };
    let logits = to_vec(model.forward(input, None));
    let mut worst = 0f32;
    for row in 0..r.batch {
        for pos in 0..r.seq {
            if r.attention_mask[row * r.seq + pos] == 0 {
                continue;
            }
            let start = (row * r.seq + pos) * r.vocab;
            worst = worst.max(max_abs_diff(&logits[start..start + r.vocab], r.logits_at(row, pos)));
        }
    }
    assert!(
        worst < TOLERANCE,
        "{name}: max |Δlogit| = {worst:e} exceeds {TOLERANCE:e}"
    );
}

/// Row 0 of the reference batch decoded through the KV cache, a 5-token prefix at once and then
/// one token per step, against transformers' full-sequence logits.
pub fn assert_cached_decoding_matches<Bk: Backend>(name: &str, device: &Bk::Device) {
    let model = load_on::<Bk>(&fixture(name), device);
    let r = Reference::read(&fixture(name));
    let mut cache = model.new_cache(32);
    // Row 0 has no padding.
    let prefix = 5;
    let mut worst = 0f32;
    let mut start = 0;
    while start < r.seq {
        let len = if start == 0 { prefix } else { 1 };
        let chunk = &r.input_ids[start..start + len];
        let ids = Tensor::<Bk, 1, Int>::from_data(chunk, device).reshape([1, len]);
        let logits = to_vec(model.forward(ForwardInput::cached(ids, &cache), Some(&mut cache)));
        for i in 0..len {
            let got = &logits[i * r.vocab..(i + 1) * r.vocab];
            worst = worst.max(max_abs_diff(got, r.logits_at(0, start + i)));
        }
        start += len;
    }
    assert_eq!(cache.len(), r.seq);
    assert!(worst < TOLERANCE, "{name}: cached decoding differs by {worst:e}");
}

/// Greedy generation from the reference prompt yields transformers' tokens, each streamed once.
pub fn assert_greedy_generation_matches<Bk: Backend>(name: &str, device: &Bk::Device) {
    let dir = fixture(name);
    let model = load_on::<Bk>(&dir, device);
    let tokenizer = GemmaTokenizer::from_dir(&dir).unwrap();
    let r = Reference::read(&dir);
    let config = GenerationConfig {
        max_new_tokens: r.greedy_new_tokens.len(),
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(),
    };
    let mut streamed = Vec::new();
    let tokens = model
        .generate(&r.greedy_prompt, &config, device, |t| {
            streamed.push(t);
            Ok(())
        })
        .unwrap();
    assert_eq!(tokens, r.greedy_new_tokens, "{name}");
    assert_eq!(streamed, tokens, "{name}: every token is streamed once, in order");
}
