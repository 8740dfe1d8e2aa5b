//! Ember → PEFT/transformers round trip, against the reference libraries themselves: Ember
//! writes an adapter, a merged export and the logits it computes with them into a temporary
//! directory; `fixtures/check_peft_roundtrip.py` loads the adapter with
//! `PeftModel.from_pretrained` and the export with transformers and compares their logits with
//! Ember's. The Python environment comes from `cargo xtask fetch-assets --with-python`
//! (`cargo xtask test` makes it).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::common::{B, Batch, load, model_dir, repo, to_vec};
use burn::tensor::DType;
use ember_lora::{Init, LoraConfig, Targets, add_lora, export_checkpoint, merge_lora, save_adapter};
use ember_model::ModelSource;
use safetensors::tensor::TensorView;

/// The cases and their bases: Gemma 3, and Gemma 3n and 4 (the multimodal one with its adapter
/// under `model.language_model`, its export as the text model), and Gemma 4's experts adapted
/// too (PEFT's `target_parameters`).
const CASES: &[(&str, &str)] = &[
    ("gemma3", "gemma3"),
    ("gemma3n", "gemma3n"),
    ("gemma4", "gemma4"),
    ("gemma4-moe", "gemma4-moe"),
    ("gemma4-moe-experts", "gemma4-moe"),
];

fn config(case: &str, base: &str) -> LoraConfig {
    let recipe = LoraConfig::seed_recipe();
    if case == "gemma4-moe-experts" {
        return LoraConfig {
            target_parameters: vec!["experts.gate_up_proj".into(), "experts.down_proj".into()],
            rank_pattern: vec![("o_proj".into(), 4), ("experts.down_proj".into(), 2)],
            ..config(base, base)
        };
    }
    LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        init_lora_weights: Init::Random,
        base_model_name_or_path: Some(format!("fixtures/models/{base}")),
        rank_pattern: vec![("o_proj".into(), 4)],
        // A multimodal model's towers have projections of the same names that PEFT cannot
        // adapt: users select the text decoder's by a pattern.
        target_modules: match base {
            "gemma4" => {
                Targets::Regex(r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)".into())
            }
            _ => recipe.target_modules.clone(),
        },
        ..recipe
    }
}

/// `adapter/`, `merged/` (f32, so the comparison measures the merge, not a cast) and
/// `ember_logits.safetensors` (the adapter's logits on the base's reference batch) in `out`.
fn write_ember_side(case: &str, base_name: &str, out: &Path) {
    let config = config(case, base_name);
    let model = add_lora(load::<B>(&model_dir(base_name)), &config, 2024).unwrap();
    save_adapter(&model, &config, &out.join("adapter")).unwrap();
    let batch = Batch::of(base_name);
    let logits = to_vec(model.forward(batch.input(), None));
    let merged = merge_lora(model).unwrap();
    let base = ModelSource::open(&model_dir(base_name)).unwrap();
    export_checkpoint(&merged, &base, &out.join("merged"), DType::F32, 500_000).unwrap();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![batch.batch, batch.seq, logits.len() / (batch.batch * batch.seq)];
    let view = TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        [("logits", view)],
        Some(metadata),
        &out.join("ember_logits.safetensors"),
    )
    .unwrap();
}

#[test]
fn peft_and_transformers_load_what_ember_writes() {
    let Some(python) = ember_testkit::reference_python() else {
        return;
    };
    for &(case, base) in CASES {
        let out = tempfile::tempdir().unwrap();
        write_ember_side(case, base, out.path());
        let run = Command::new(&python)
            .arg(repo().join("fixtures/check_peft_roundtrip.py"))
            .arg(out.path())
            .arg(base)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let stdout = String::from_utf8_lossy(&run.stdout);
        eprintln!("{case}: {stdout}");
        assert!(
            run.status.success(),
            "{case}: {stdout}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(stdout.matches(": max |dlogit|").count(), 2, "{case}: {stdout}");
    }
}
