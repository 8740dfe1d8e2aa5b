//! GGUF import against the fixtures `fixtures/make_gguf_fixtures.py` made with llama.cpp's
//! `gguf` package: dequantization of every type, metadata, broken files, and tiny Gemma, Gemma 2
//! and Gemma 3 models stored as `convert_hf_to_gguf.py` stores them.

use std::path::{Path, PathBuf};

use crate::common::{B, fixture, to_vec};
use burn::tensor::{DType, Int, Tensor};
use ember_model::gguf::{self, ConvertOptions, GgufFile, GgufWeights, Value};
use ember_model::{AttentionMask, ForwardInput, GemmaConfig, GemmaForCausalLM, LoadOptions, ModelError, ModelSource};
use safetensors::SafeTensors;

fn gguf_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gguf")
        .join(name)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn every_type_dequantizes_bit_for_bit_as_ggml_does() {
    let file = GgufFile::open(&gguf_fixture("quants.gguf")).unwrap();
    let expected_bytes = std::fs::read(gguf_fixture("quants-expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    let mut checked = Vec::new();
    for (name, view) in expected.tensors() {
        let info = file.tensor(&name).unwrap_or_else(|| panic!("{name} is in the file"));
        assert_eq!(
            info.shape(),
            view.shape(),
            "{name}: GGUF dims reversed are the PyTorch shape"
        );
        let values = file.read_f32(info).unwrap();
        let want = f32s(view.data());
        let differ = values
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{name} ({}): {differ} values differ from ggml's",
            info.type_name()
        );
        checked.push(info.type_name());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "BF16", "F16", "F32", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"
        ]
    );
}

#[test]
fn metadata_of_every_value_type_is_read() {
    let file = GgufFile::open(&gguf_fixture("quants.gguf")).unwrap();
    let get = |key: &str| file.get(key).unwrap_or_else(|| panic!("{key}")).clone();
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.u64"), Value::U64(1 << 60));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 60)));
    assert_eq!(get("test.f32"), Value::F32(1.5));
    assert_eq!(get("test.f64"), Value::F64(-2.25));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string"), Value::String("héllo ▁ world".into()));
    assert_eq!(
        get("test.array.i32"),
        Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)])
    );
    assert_eq!(
        get("test.array.string"),
        Value::Array(["a", "bc", ""].map(|s| Value::String(s.into())).to_vec())
    );
    let nested = Value::Array(vec![
        Value::Array(vec![Value::I32(1), Value::I32(2)]),
        Value::Array(vec![Value::I32(3)]),
    ]);
    assert_eq!(get("test.array.nested"), nested);
    assert_eq!(get("general.architecture"), Value::String("gemma3".into()));
}

#[test]
fn an_unsupported_type_is_refused_naming_the_tensor_its_type_and_the_supported_ones() {
    let file = GgufFile::open(&gguf_fixture("quants.gguf")).unwrap();
    let err = file.read_f32(file.tensor("t.q2_k").unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedGgmlType { .. }), "{err}");
    let message = err.to_string();
    for part in ["t.q2_k", "Q2_K", "quants.gguf", "Q4_K", "Q6_K"] {
        assert!(message.contains(part), "{part}: {message}");
    }
}

/// `bytes` written to a temporary `.gguf` file.
fn temp_gguf(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn open_err(path: &Path) -> String {
    let message = GgufFile::open(path).err().expect("opening should fail").to_string();
    assert!(message.contains("broken.gguf"), "the file is named: {message}");
    assert!(!message.contains('\n'), "one line: {message}");
    message
}

#[test]
fn a_truncated_file_is_refused_naming_the_file_and_what_is_cut_off() {
    let bytes = std::fs::read(gguf_fixture("quants.gguf")).unwrap();
    let (_dir, path) = temp_gguf(&bytes[..bytes.len() / 2]);
    let message = open_err(&path);
    assert!(
        message.contains("truncated") && message.contains("tensor `t."),
        "{message}"
    );

    let (_dir, path) = temp_gguf(&bytes[..100]);
    let message = open_err(&path);
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn a_file_that_is_not_gguf_is_refused() {
    let (_dir, path) = temp_gguf(b"{\"not\": \"a model\"}");
    assert!(open_err(&path).contains("GGUF"));
    let (_dir, path) = temp_gguf(b"GG");
    assert!(open_err(&path).contains("truncated"));
}

#[test]
fn another_architecture_is_refused_by_name() {
    let path = gguf_fixture("unknown-arch.gguf");
    let err = GgufWeights::new(&GgufFile::open(&path).unwrap()).err().unwrap();
    assert!(matches!(err, ModelError::UnknownArchitecture { .. }), "{err}");
    assert!(err.to_string().contains("`llama`"), "{err}");
    let load = GemmaForCausalLM::<B>::load(&path, &LoadOptions::new(DType::F32), &Default::default());
    assert!(load.err().unwrap().to_string().contains("`llama`"));
}

fn convert_tiny(dtype: DType) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    gguf::convert(
        &gguf_fixture("tiny-gemma3.gguf"),
        out.path(),
        &ConvertOptions::new(dtype),
    )
    .unwrap();
    out
}

#[test]
fn the_tiny_gemma3_converts_back_to_the_checkpoint_it_was_made_from() {
    let out = convert_tiny(DType::F32);
    let converted_bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let converted = SafeTensors::deserialize(&converted_bytes).unwrap();
    let original_bytes = std::fs::read(fixture("gemma3").join("model.safetensors")).unwrap();
    let original = SafeTensors::deserialize(&original_bytes).unwrap();
    let mut names = converted.names();
    names.sort();
    let mut original_names = original.names();
    original_names.sort();
    assert_eq!(names, original_names);
    for name in names {
        let (got, want) = (converted.tensor(name).unwrap(), original.tensor(name).unwrap());
        assert_eq!(got.shape(), want.shape(), "{name}");
        for (g, w) in f32s(got.data()).into_iter().zip(f32s(want.data())) {
            if name.ends_with("norm.weight") {
                // Stored as f32(1 + w): taking the one off again is exact up to its rounding.
                assert!((g - w).abs() <= 6e-8, "{name}: {g} vs {w}");
            } else {
                // The 2-D weights were stored as F16.
                assert_eq!(g, half::f16::from_f32(w).to_f32(), "{name}");
            }
        }
    }
}

#[test]
fn gemma_and_gemma2_files_map_back_to_their_checkpoints() {
    for (file, name) in [("tiny-gemma.gguf", "gemma-mha-untied"), ("tiny-gemma2.gguf", "gemma2")] {
        let gguf_file = GgufFile::open(&gguf_fixture(file)).unwrap();
        let weights = GgufWeights::new(&gguf_file).unwrap();
        let original_bytes = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
        let original = SafeTensors::deserialize(&original_bytes).unwrap();
        let mut names = weights.names();
        names.sort();
        let mut original_names = original.names();
        original_names.sort();
        assert_eq!(names, original_names, "{file}");
        for tensor in names {
            let (shape, got) = weights.read_f32(tensor).unwrap();
            let want = original.tensor(tensor).unwrap();
            assert_eq!(shape, want.shape(), "{file}: {tensor}");
            let want = f32s(want.data());
            if tensor.ends_with("norm.weight") {
                let worst = ember_testkit::max_abs_diff(&got, &want);
                assert!(worst <= 1.2e-7, "{file}: {tensor}: {worst}");
                continue;
            }
            // Q8_0: within one quantization step (its block's max / 127) of the original.
            for (g, w) in got.chunks(32).zip(want.chunks(32)) {
                let step = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let worst = ember_testkit::max_abs_diff(g, w);
                assert!(worst <= step, "{file}: {tensor}: {worst} > {step}");
            }
        }
        let converted = gguf::gemma_config(weights.file()).unwrap();
        let original = GemmaConfig::from_file(fixture(name).join("config.json")).unwrap();
        // Neither query_pre_attn_scalar (llama.cpp takes head_dim) nor the dtype is in GGUF.
        let expected = GemmaConfig {
            query_pre_attn_scalar: converted.query_pre_attn_scalar,
            torch_dtype: None,
            ..original
        };
        assert_eq!(converted, expected, "{file}");
        assert_eq!(converted.query_pre_attn_scalar, 16.0, "{file}");
    }
}

#[test]
fn the_converted_config_is_the_original_up_to_what_gguf_does_not_store() {
    let out = convert_tiny(DType::BF16);
    let converted = GemmaConfig::from_file(out.path().join("config.json")).unwrap();
    let original = GemmaConfig::from_file(fixture("gemma3").join("config.json")).unwrap();
    // GGUF has no query_pre_attn_scalar: llama.cpp takes head_dim (the fixture deliberately
    // used another value), and the file's dtype is what it was converted to.
    assert_eq!(converted.query_pre_attn_scalar, 16.0);
    assert_eq!(converted.torch_dtype.as_deref(), Some("bfloat16"));
    let expected = GemmaConfig {
        query_pre_attn_scalar: 16.0,
        torch_dtype: Some("bfloat16".into()),
        eos_token_ids: vec![1],
        ..original
    };
    assert_eq!(converted, expected);
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(out.path().join(file).exists(), "{file}");
    }
    let generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("generation_config.json")).unwrap()).unwrap();
    assert_eq!(generation["eos_token_id"], serde_json::json!([1, 6]));
}

#[test]
fn a_gguf_file_loads_directly_as_its_converted_checkpoint_does() {
    let out = convert_tiny(DType::F32);
    let options = LoadOptions::new(DType::F32);
    let device = Default::default();
    let direct = GemmaForCausalLM::<B>::load(&gguf_fixture("tiny-gemma3.gguf"), &options, &device).unwrap();
    let converted = GemmaForCausalLM::<B>::load(out.path(), &options, &device).unwrap();
    let logits = |model: &GemmaForCausalLM<B>| {
        let ids = Tensor::<B, 1, Int>::from_data([2, 272, 274, 281, 7, 300].as_slice(), &device).reshape([1, 6]);
        let positions = Tensor::<B, 1, Int>::arange(0..6, &device).reshape([1, 6]);
        let input = ForwardInput {
            input_ids: ids,
            positions,
            mask: AttentionMask::causal(1, 0, 6, 6, &device),
        };
        to_vec(model.forward(input, None))
    };
    assert_eq!(logits(&direct), logits(&converted));
}

#[test]
fn the_embedded_vocabulary_tokenizes_as_sentencepiece_does() {
    let tokenizer = ModelSource::open(&gguf_fixture("tiny-gemma3.gguf"))
        .unwrap()
        .tokenizer()
        .unwrap();
    // "ab▁ab▁the": merges by score give ab, ▁ab, ▁the.
    assert_eq!(tokenizer.encode_raw("ab ab the").unwrap(), [272, 274, 281]);
    // A user-defined piece llama.cpp wrote as two spaces is `▁▁` again, merged first (score 0).
    assert_eq!(tokenizer.encode_raw("  a").unwrap(), [8, 266]);
    // Control and user-defined pieces match as added tokens; unknown text falls back to bytes.
    assert_eq!(
        tokenizer.encode_raw("<start_of_turn>ab\n\nx é").unwrap(),
        [5, 272, 7, 9 + b'x' as u32, 265, 9 + 0xC3, 9 + 0xA9]
    );
    assert_eq!(tokenizer.encode("ab").unwrap(), [2, 272]);
    assert_eq!(
        tokenizer.decode(&[2, 272, 274, 281, 265, 204, 178]).unwrap(),
        "ab ab the é"
    );
    let mut stops = tokenizer.stop_tokens().to_vec();
    stops.sort();
    assert_eq!(stops, [1, 6]);
}
