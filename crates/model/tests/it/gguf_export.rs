//! GGUF export: the bytes are ggml's (against llama.cpp's own `gguf` package), Ember reads its
//! exports back to the same logits, and llama.cpp itself (node-llama-cpp's prebuilt binaries)
//! continues prompts with Ember's greedy tokens.

use std::path::{Path, PathBuf};

use crate::common::{B, fixture, to_vec};
use burn::tensor::{DType, Int, Tensor};
use ember_model::gguf::{GgufFile, GgufFileType, Value, export_gguf};
use ember_model::{
    AttentionMask, ForwardInput, GemmaForCausalLM, GenerationConfig, LoadOptions, ModelSource, SamplingConfig,
};
use ember_testkit::llama_cpp::{Step, greedy_agreement};
use safetensors::SafeTensors;

/// The fixtures llama.cpp can run: not `gemma-mha-untied`, whose head is not the embedding.
const MODELS: &[&str] = &["gemma-mqa", "gemma2", "gemma3"];

/// Exports the fixture `name` as `file_type` into a temporary directory.
fn export(name: &str, file_type: GgufFileType) -> (tempfile::TempDir, PathBuf) {
    let source = ModelSource::open(&fixture(name)).unwrap();
    let model = source
        .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    export_gguf(&model, &source, &path, file_type).unwrap_or_else(|e| panic!("{name}: {e}"));
    (dir, path)
}

fn load(path: &Path) -> GemmaForCausalLM<B> {
    ModelSource::open(path)
        .unwrap()
        .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
        .unwrap()
}

/// Logits of one sequence, `[len * vocab]`.
fn logits(model: &GemmaForCausalLM<B>, ids: &[u32]) -> Vec<f32> {
    let device = Default::default();
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input = ForwardInput {
        input_ids: Tensor::<B, 1, Int>::from_data(ids.as_slice(), &device).reshape([1, n]),
        positions: Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]),
        mask: AttentionMask::causal(1, 0, n, n, &device),
    };
    to_vec(model.forward(input, None))
}

/// Token sequences of the fixture tokenizer (BOS first), long enough to pass the sliding windows.
fn prompts(name: &str) -> Vec<Vec<u32>> {
    let tokenizer = ModelSource::open(&fixture(name)).unwrap().tokenizer().unwrap();
    [
        "The capital of France is",
        "Once upon a time, in a land far away, there lived a",
        "def add(a, b):\n    return",
        "1, 2, 3, 4,",
    ]
    .iter()
    .map(|text| tokenizer.encode(text).unwrap())
    .collect()
}

#[test]
fn an_f32_export_reads_back_to_the_same_logits() {
    for &name in MODELS {
        let (_dir, path) = export(name, GgufFileType::F32);
        let original = crate::common::load(&fixture(name));
        let exported = load(&path);
        for ids in prompts(name) {
            let worst = ember_testkit::max_abs_diff(&logits(&original, &ids), &logits(&exported, &ids));
            assert!(worst <= 1e-5, "{name}: |Δlogit| {worst}");
        }
    }
}

#[test]
fn matrices_hold_the_bytes_llama_cpps_gguf_package_writes() {
    let expected_bytes = std::fs::read(fixture("../gguf/export-expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    for (file_type, suffix) in [
        (GgufFileType::F16, "f16"),
        (GgufFileType::BF16, "bf16"),
        (GgufFileType::Q8_0, "q8_0"),
    ] {
        let (_dir, path) = export("gemma3", file_type);
        let file = GgufFile::open(&path).unwrap();
        let mut checked = 0;
        for (key, want) in expected.tensors() {
            let Some(name) = key.strip_suffix(&format!(".{suffix}")) else {
                continue;
            };
            let info = file.tensor(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(info.type_name().to_lowercase(), suffix, "{name}");
            assert!(file.tensor_bytes(info).unwrap() == want.data(), "{name} as {suffix}");
            checked += 1;
        }
        assert_eq!(checked, 3, "{suffix}");
        // Norms stay F32, stored as 1 + w.
        let norm = file.tensor("blk.0.attn_norm.weight").unwrap();
        assert_eq!(norm.type_name(), "F32");
    }
}

#[test]
fn the_export_states_the_architecture_and_embeds_the_tokenizer() {
    let (_dir, path) = export("gemma2", GgufFileType::Q8_0);
    let file = GgufFile::open(&path).unwrap();
    let get = |key: &str| file.get(key).unwrap_or_else(|| panic!("{key}")).clone();
    assert_eq!(get("general.architecture"), Value::String("gemma2".into()));
    assert_eq!(get("general.file_type"), Value::U32(7));
    assert_eq!(get("gemma2.attention.sliding_window"), Value::U32(6));
    assert_eq!(get("gemma2.attn_logit_softcapping"), Value::F32(2.0));
    assert_eq!(get("gemma2.final_logit_softcapping"), Value::F32(5.0));
    assert_eq!(get("gemma2.attention.key_length"), Value::U32(16));
    // The fixtures' byte-level BPE is llama.cpp's `gpt2` vocabulary, with its merges.
    assert_eq!(get("tokenizer.ggml.model"), Value::String("gpt2".into()));
    assert_eq!(file.get_array("tokenizer.ggml.tokens").unwrap().unwrap().len(), 512);
    assert_eq!(file.get_array("tokenizer.ggml.merges").unwrap().unwrap().len(), 250);
    assert_eq!(get("tokenizer.ggml.bos_token_id"), Value::U32(2));
    assert_eq!(get("tokenizer.ggml.eos_token_id"), Value::U32(1));
    assert_eq!(get("tokenizer.ggml.padding_token_id"), Value::U32(0));
    // Read back as a checkpoint, the config is the original's but for the query scale, which
    // llama.cpp fixes at head_dim and the export folds into the query weights.
    let config = ModelSource::open(&path).unwrap().config().clone();
    let original = ModelSource::open(&fixture("gemma2")).unwrap().config().clone();
    assert_eq!(config.query_pre_attn_scalar, 16.0);
    assert_eq!(
        config,
        ember_model::GemmaConfig {
            query_pre_attn_scalar: 16.0,
            torch_dtype: None,
            eos_token_ids: vec![1],
            ..original
        }
    );
}

#[test]
fn a_config_llama_cpp_cannot_run_is_refused_by_key() {
    let source = ModelSource::open(&fixture("gemma3")).unwrap();
    let mut model = source
        .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
        .unwrap();
    model.config.layer_types.swap(0, 5);
    let dir = tempfile::tempdir().unwrap();
    let err = export_gguf(&model, &source, &dir.path().join("m.gguf"), GgufFileType::F16).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("layer_types") && message.contains("llama.cpp"),
        "{message}"
    );
}

#[test]
fn gemma_3n_and_4_are_refused_by_the_gguf_export() {
    for name in ["gemma3n", "gemma4-dense"] {
        let source = ModelSource::open(&fixture(name)).unwrap();
        let model = source
            .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = export_gguf(&model, &source, &dir.path().join("m.gguf"), GgufFileType::F16).unwrap_err();
        assert!(err.to_string().contains("Gemma 1 to 3"), "{name}: {err}");
        assert!(!dir.path().join("m.gguf").exists(), "{name}: nothing is written");
    }
}

fn llama_cpp(root: &Path, request: serde_json::Value) -> serde_json::Value {
    ember_testkit::llama_cpp::run(root, &request)
}

fn ids(value: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

/// Ember's greedy continuation of `prompt`, `n` tokens, stopping nowhere.
fn greedy(model: &GemmaForCausalLM<B>, prompt: &[u32], n: usize) -> Vec<u32> {
    let config = GenerationConfig {
        max_new_tokens: n,
        stop_tokens: Vec::new(),
        sampling: SamplingConfig::default(),
    };
    model
        .generate(prompt, &config, &Default::default(), |_| Ok(()))
        .unwrap()
}

/// Ember's greedy steps after `prompt`, `n` of them or up to a stop token (where llama.cpp
/// stops), each with Ember's runner-up and logit gap.
fn steps(model: &GemmaForCausalLM<B>, prompt: &[u32], n: usize, stops: &[u32]) -> Vec<Step> {
    let tokens: Vec<u32> = greedy(model, prompt, n)
        .into_iter()
        .take_while(|t| !stops.contains(t))
        .collect();
    let sequence: Vec<u32> = prompt.iter().chain(&tokens).copied().collect();
    let rows = logits(model, &sequence);
    ember_testkit::llama_cpp::steps(&rows, model.config.vocab_size, prompt.len(), &tokens)
}

/// llama.cpp continues prompts with Ember's greedy tokens, up to near-ties of the random
/// fixtures (Ember's top-2 logits closer than `tie`), where either runtime's rounding may pick
/// either token; the test states how many tokens it compared and requires nearly all.
#[test]
fn llama_cpp_continues_f32_and_f16_exports_with_embers_greedy_tokens() {
    let Some(root) = ember_testkit::llama_cpp::root() else {
        return;
    };
    // F32: both runtimes agree to float rounding. F16: llama.cpp also rounds the activations
    // to f16 inside its f16 dot products.
    for (file_type, tie) in [(GgufFileType::F32, 1e-3), (GgufFileType::F16, 1e-2)] {
        let (mut compared, mut total) = (0, 0);
        for &name in MODELS {
            let (_dir, path) = export(name, file_type);
            // Ember runs what the file holds: for F16, the rounded weights.
            let model = load(&path);
            let prompts = prompts(name);
            let stops = ModelSource::open(&fixture(name))
                .unwrap()
                .tokenizer()
                .unwrap()
                .stop_tokens()
                .to_vec();
            let theirs = ids(&llama_cpp(
                &root,
                serde_json::json!({"model": path, "greedy": {"prompts": prompts, "tokens": 16}}),
            )["greedy"]);
            for (prompt, theirs) in prompts.iter().zip(&theirs) {
                let ours = steps(&model, prompt, 16, &stops);
                compared += greedy_agreement(&ours, theirs, tie)
                    .unwrap_or_else(|e| panic!("{name} {file_type:?} {prompt:?}: {e}"));
                total += ours.len();
            }
        }
        eprintln!(
            "{file_type:?}: llama.cpp gave Ember's greedy tokens for {compared} of {total} (up to near-ties < {tie})"
        );
        assert!(
            compared * 10 >= total * 9,
            "{file_type:?}: only {compared} of {total} compared"
        );
    }
}

/// llama.cpp picks Ember's top token (Ember running the exported file's weights) at 256
/// teacher-forced positions of each fixture: at least `min_share` of them. llama.cpp quantizes
/// the activations inside its quantized dot products (to Q8_0 or Q8_K), so near-ties may go
/// either way; the test prints the agreement.
fn top1_agreement(file_type: GgufFileType, min_share: f64) {
    let Some(root) = ember_testkit::llama_cpp::root() else {
        return;
    };
    for &name in MODELS {
        let (_dir, path) = export(name, file_type);
        let model = load(&path);
        // 4 sequences of 64 tokens: 256 teacher-forced positions.
        let sequences: Vec<Vec<u32>> = prompts(name)
            .iter()
            .map(|p| {
                let mut ids = p.clone();
                ids.extend(greedy(&model, p, 64));
                ids.truncate(64);
                ids
            })
            .collect();
        let vocab = model.config.vocab_size;
        let ours: Vec<Vec<u32>> = sequences
            .iter()
            .map(|ids| logits(&model, ids).chunks(vocab).map(ember_model::argmax).collect())
            .collect();
        let theirs = ids(&llama_cpp(&root, serde_json::json!({"model": path, "teacher": sequences}))["teacher"]);
        let positions = ours.iter().map(Vec::len).sum::<usize>();
        let agree = ours
            .iter()
            .zip(&theirs)
            .flat_map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y))
            .count();
        eprintln!("{name}: {file_type:?} top-1 agreement {agree}/{positions}");
        assert_eq!(positions, 256);
        assert!(
            agree as f64 >= min_share * positions as f64,
            "{name} {file_type:?}: {agree}/{positions}"
        );
    }
}

#[test]
fn llama_cpp_agrees_with_ember_on_the_top_token_of_a_q8_0_export() {
    top1_agreement(GgufFileType::Q8_0, 0.95);
}

#[test]
fn llama_cpp_agrees_with_ember_on_the_top_token_of_a_q4_k_m_export() {
    // 246 to 250 of 256 measured.
    top1_agreement(GgufFileType::Q4_K_M, 0.90);
}

/// Mixed text for the tokenizer check: code, emoji, CJK, whitespace runs.
const MIXED_TEXT: &[&str] = &[
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n\tprintln!(\"{x:?}\");\n}\n",
    "emoji 🦀🔥👍🏽, 日本語のテキスト, 한국어, русский текст, café naïve",
    "   leading spaces, double  spaces,    many     spaces\n\n\nnewlines\r\n\t\ttabs   ",
    "Numbers 1234567890 3.14159 -42 1e-6 0x1F; URLs https://example.com/a?b=c&d=e",
];

/// llama.cpp tokenizes mixed text with the exported vocabulary (the fixtures' byte-level BPE as
/// llama.cpp's `gpt2` model, with its merges) into Ember's ids.
#[test]
fn llama_cpp_tokenizes_with_the_exported_vocabulary_as_ember_does() {
    let Some(root) = ember_testkit::llama_cpp::root() else {
        return;
    };
    for &name in MODELS {
        let (_dir, path) = export(name, GgufFileType::Q8_0);
        let tokenizer = ModelSource::open(&fixture(name)).unwrap().tokenizer().unwrap();
        let theirs = ids(&llama_cpp(&root, serde_json::json!({"model": path, "tokenize": MIXED_TEXT}))["tokenize"]);
        for (text, theirs) in MIXED_TEXT.iter().zip(&theirs) {
            assert_eq!(&tokenizer.encode_raw(text).unwrap(), theirs, "{name}: {text:?}");
        }
    }
}

/// Ember's Q4_K_M export is what llama.cpp's own quantizer makes of Ember's f32 export: every
/// tensor of the same type (llama.cpp's mix) and the same bytes. The fixtures' rows (64 and
/// 128 values) are no whole k-quant block, so this checks the mix and its fallbacks (Q5_0,
/// Q8_0); the k-quants' bytes are checked by the model crate's unit tests against ggml's and
/// on the real 270M (`gguf_real.rs`).
#[test]
fn a_q4_k_m_export_is_what_llama_cpps_quantizer_makes_of_the_f32_export() {
    let Some(root) = ember_testkit::llama_cpp::root() else {
        return;
    };
    for &name in MODELS {
        let (dir, f32_path) = export(name, GgufFileType::F32);
        let theirs_path = dir.path().join("llama-quantize.gguf");
        ember_testkit::llama_cpp::quantize(&root, &f32_path, &theirs_path, "Q4_K_M");
        let (_ours_dir, ours_path) = export(name, GgufFileType::Q4_K_M);
        let types = same_tensors(&ours_path, &theirs_path);
        eprintln!("{name}: Q4_K_M tensor types {types:?}");
        assert!(
            types.contains_key("Q5_0") && types.contains_key("Q8_0"),
            "{name}: {types:?}"
        );
    }
}

/// Asserts that two GGUF files hold the same tensors (names, shapes, types, bytes) and
/// `general.file_type`; returns how many tensors each type has.
fn same_tensors(ours: &Path, theirs: &Path) -> std::collections::BTreeMap<String, usize> {
    let (ours, theirs) = (GgufFile::open(ours).unwrap(), GgufFile::open(theirs).unwrap());
    assert_eq!(ours.get("general.file_type"), theirs.get("general.file_type"));
    let names = |file: &GgufFile| {
        let mut names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
        names.sort();
        names
    };
    assert_eq!(names(&ours), names(&theirs));
    let mut types = std::collections::BTreeMap::new();
    for info in ours.tensors() {
        let other = theirs.tensor(&info.name).unwrap();
        assert_eq!(
            (info.type_name(), info.shape()),
            (other.type_name(), other.shape()),
            "{}",
            info.name
        );
        assert!(
            ours.tensor_bytes(info).unwrap() == theirs.tensor_bytes(other).unwrap(),
            "{}: {} bytes differ",
            info.name,
            info.type_name()
        );
        *types.entry(info.type_name()).or_insert(0) += 1;
    }
    types
}
