//! Checkpoint directories as they come: sharded, bf16 on disk, or broken. A broken one gives a
//! one-line error naming the problem, never a panic.

use std::path::Path;

use crate::common::{B, copy_fixture};
use burn::tensor::DType;
use ember_model::{GemmaForCausalLM, LoadOptions, ModelError};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn load_err(dir: &Path) -> ModelError {
    match GemmaForCausalLM::<B>::load(dir, &LoadOptions::new(DType::F32), &Default::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "error is one line: {message}");
            e
        }
    }
}

/// Rewrites `model.safetensors` through `edit`, which gets (name, shape, bytes) triples.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("gemma2");
    let key = "model.layers.1.mlp.up_proj.weight";
    rewrite_weights(dir.path(), |t| t.retain(|(name, _, _)| name != key));
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
    assert!(err.to_string().contains(key), "{err}");
}

#[test]
fn wrongly_shaped_tensor_is_named_with_both_shapes() {
    let dir = copy_fixture("gemma3");
    let key = "model.layers.0.self_attn.k_proj.weight";
    rewrite_weights(dir.path(), |t| {
        let entry = t.iter_mut().find(|(name, _, _)| name == key).unwrap();
        entry.1 = vec![16, 64]; // one kv head instead of two
        entry.2.truncate(16 * 64 * 4);
    });
    let err = load_err(dir.path());
    let message = err.to_string();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{message}");
    assert!(
        message.contains(key) && message.contains("[16, 64]") && message.contains("[32, 64]"),
        "{message}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = copy_fixture("gemma-mqa");
    rewrite_weights(dir.path(), |t| {
        t.push(("model.layers.9.mlp.up_proj.weight".into(), vec![2], vec![0; 8]))
    });
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::UnexpectedTensors { .. }), "{err}");
    assert!(err.to_string().contains("model.layers.9.mlp.up_proj.weight"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = copy_fixture("gemma-mqa");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn unknown_model_type_is_refused() {
    let dir = copy_fixture("gemma-mqa");
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, text.replace("\"gemma\"", "\"llama\"")).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::UnknownModelType { .. }), "{err}");
    assert!(err.to_string().contains("llama"), "{err}");
}

#[test]
fn malformed_config_names_the_key() {
    let dir = copy_fixture("gemma2");
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": \"two\""),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");
}

#[test]
fn missing_weights_file_is_reported() {
    let dir = copy_fixture("gemma2");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err}");
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let dir = copy_fixture("gemma2");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let views: Vec<(String, TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.into());
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    crate::common::assert_logits_match(dir.path(), "gemma2");
}

#[test]
fn bf16_checkpoint_is_converted_to_the_run_dtype() {
    let dir = copy_fixture("gemma2");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let bf16: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                .collect();
            (name, view.shape().to_vec(), bf16)
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::BF16, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();

    let model = crate::common::load(dir.path());
    let weight = model.model.layers[0]
        .mlp
        .up_proj
        .weight
        .val()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let original = st.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
    let expected: Vec<f32> = original
        .data()
        .chunks_exact(4)
        .map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_f32())
        .collect();
    assert_eq!(weight, expected, "bf16 weights widen to f32 exactly");
}
