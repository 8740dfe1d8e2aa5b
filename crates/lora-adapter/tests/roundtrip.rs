//! Ember → PEFT/transformers round trip. Ember writes an adapter, a merged export and the
//! logits it computes with them into `fixtures/lora/ember-roundtrip/`;
//! `fixtures/check_peft_roundtrip.py` loads those with PEFT and transformers and compares.
//!
//! Regenerate (then rerun the Python check on a machine with PEFT):
//!     cargo test -p ember-lora --test roundtrip -- --ignored

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::DType;
use common::{B, Batch, load, max_abs_diff, model_dir, read_f32, repo, to_vec};
use ember_lora::{Init, LoraConfig, add_lora, export_checkpoint, load_adapter, merge_lora, save_adapter};
use safetensors::tensor::TensorView;

const BASE: &str = "gemma3";

fn out_dir() -> PathBuf {
    repo().join("fixtures/lora/ember-roundtrip")
}

fn config() -> LoraConfig {
    LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        init_lora_weights: Init::Random,
        base_model_name_or_path: Some("fixtures/models/gemma3".into()),
        rank_pattern: vec![("o_proj".into(), 4)],
        ..LoraConfig::default()
    }
}

#[test]
#[ignore = "writes fixtures/lora/ember-roundtrip; run by hand"]
fn write_roundtrip_fixture() {
    let model = add_lora(load::<B>(&model_dir(BASE)), &config(), 2024).unwrap();
    save_adapter(&model, &config(), &out_dir().join("adapter")).unwrap();
    let logits = to_vec(model.forward(Batch::of(BASE).input(), None));
    let merged = merge_lora(model).unwrap();
    // Exported in f32 so the comparison measures the merge, not a dtype cast.
    export_checkpoint(
        &merged,
        &model_dir(BASE),
        &out_dir().join("merged"),
        DType::F32,
        500_000,
    )
    .unwrap();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let batch = Batch::of(BASE);
    let shape = vec![batch.batch, batch.seq, logits.len() / (batch.batch * batch.seq)];
    let view = TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        [("logits", view)],
        Some(metadata),
        &out_dir().join("ember_logits.safetensors"),
    )
    .unwrap();
}

#[test]
fn committed_roundtrip_fixture_is_what_ember_computes_now() {
    let (model, _) = load_adapter(load::<B>(&model_dir(BASE)), &out_dir().join("adapter")).unwrap();
    let batch = Batch::of(BASE);
    let logits = to_vec(model.forward(batch.input(), None));
    let recorded = &read_f32(&out_dir().join("ember_logits.safetensors"))[0].2;
    assert!(max_abs_diff(&logits, recorded) < 1e-5);
    let merged = load::<B>(&out_dir().join("merged"));
    let merged_logits = to_vec(merged.forward(batch.input(), None));
    assert!(max_abs_diff(&merged_logits, recorded) < 1e-4);
}
