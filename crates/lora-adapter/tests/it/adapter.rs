//! Adapter invariants: what trains, what a fresh adapter does, and that saving, loading,
//! merging and exporting preserve the function the model computes.

use crate::common::{AD, B, Batch, load, model_dir, repo, to_vec};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::DType;
use ember_lora::{
    Init, LoraConfig, LoraError, Targets, adapter_parameter_count, add_lora, export_checkpoint, load_adapter,
    merge_lora, save_adapter,
};
use ember_model::{FrozenWeight, GemmaConfig, causal_lm_loss_sum, named_params};
use ember_testkit::max_abs_diff;

fn random_config() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        init_lora_weights: Init::Random,
        ..LoraConfig::seed_recipe()
    }
}

fn logits_of(model: &ember_model::GemmaForCausalLM<B>, base: &str) -> Vec<f32> {
    to_vec(model.forward(Batch::of(base).input(), None))
}

#[test]
fn lora_backward_grads_adapter_only() {
    let model = add_lora(load::<AD>(&model_dir("gemma3")), &LoraConfig::seed_recipe(), 1).unwrap();
    let batch = Batch::of("gemma3");
    let (sum, count) = causal_lm_loss_sum(model.forward(batch.input(), None), batch.labels());
    let grads = GradientsParams::from_grads((sum / count as f32).backward(), &model);
    let mut adapters = 0;
    for param in named_params(&model) {
        let has_grad = match param.shape.len() {
            1 => grads.get::<B, 1>(param.id).is_some(),
            _ => grads.get::<B, 2>(param.id).is_some(),
        };
        let is_adapter = param.name.contains(".lora.");
        assert_eq!(has_grad, is_adapter, "{}: gradient {has_grad}", param.name);
        adapters += is_adapter as usize;
    }
    assert_eq!(adapters, 7 * 7 * 2, "A and B on all 7 projections of all 7 layers");
}

#[test]
fn adapter_parameter_count_is_what_the_adapters_add() {
    let base = load::<B>(&model_dir("gemma3"));
    let base_params = base.num_params();
    assert_eq!(adapter_parameter_count(&base), 0);
    let model = add_lora(base, &LoraConfig::seed_recipe(), 1).unwrap();
    let c = GemmaConfig::from_file(model_dir("gemma3").join("config.json")).unwrap();
    let (hidden, mlp) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    // r · (in + out) for q, k, v, o, gate, up, down.
    let per_layer = 16 * ((hidden + q) + 2 * (hidden + kv) + (q + hidden) + 3 * (hidden + mlp));
    assert_eq!(adapter_parameter_count(&model), c.num_hidden_layers() * per_layer);
    assert_eq!(model.num_params(), base_params + adapter_parameter_count(&model));
}

#[test]
fn fresh_adapter_with_zero_b_leaves_logits_unchanged() {
    let base = load::<B>(&model_dir("gemma2"));
    let before = logits_of(&base, "gemma2");
    let model = add_lora(base, &LoraConfig::seed_recipe(), 3).unwrap();
    assert_eq!(logits_of(&model, "gemma2"), before);
}

#[test]
fn saved_adapter_loads_back_to_the_same_model() {
    let model = add_lora(load::<B>(&model_dir("gemma3")), &random_config(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    save_adapter(&model, &random_config(), &adapter).unwrap();
    let (loaded, config) = load_adapter(load::<B>(&model_dir("gemma3")), &adapter).unwrap();
    assert_eq!(config, random_config());
    assert_eq!(logits_of(&loaded, "gemma3"), logits_of(&model, "gemma3"));

    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
    let info = metadata
        .info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!((info.dtype, info.shape.clone()), (safetensors::Dtype::F32, vec![4, 64]));
    let info = metadata
        .info("base_model.model.model.layers.6.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(info.shape, vec![64, 4]);
}

#[test]
fn adapter_for_another_model_size_is_refused() {
    let model = add_lora(load::<B>(&model_dir("gemma3")), &random_config(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &random_config(), dir.path()).unwrap();
    // gemma-mqa has one kv head of 24 dims: k_proj is [24, 64], not [32, 64].
    let err = load_adapter(load::<B>(&model_dir("gemma-mqa")), dir.path()).unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("another model size"), "{err}");
}

#[test]
fn adapter_with_layers_the_model_lacks_is_refused() {
    let model = add_lora(load::<B>(&model_dir("gemma3")), &random_config(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &random_config(), dir.path()).unwrap();
    // gemma2 has 4 layers, the adapter 7.
    let err = load_adapter(load::<B>(&model_dir("gemma2")), dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            LoraError::UnexpectedTensors { .. } | LoraError::ShapeMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_adapter_settings_are_refused_by_name() {
    let model = add_lora(load::<B>(&model_dir("gemma3")), &random_config(), 5).unwrap();
    for (key, value) in [
        ("use_dora", serde_json::json!(true)),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("bias", serde_json::json!("all")),
        ("init_lora_weights", serde_json::json!("pissa")),
        ("peft_type", serde_json::json!("IA3")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&model, &random_config(), dir.path()).unwrap();
        let path = dir.path().join("adapter_config.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json[key] = value;
        std::fs::write(&path, json.to_string()).unwrap();
        let err = load_adapter(load::<B>(&model_dir("gemma3")), dir.path()).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn a_target_that_matches_no_projection_is_refused() {
    let config = LoraConfig {
        target_modules: Targets::Names(vec!["q_proj".into(), "lm_head".into()]),
        ..LoraConfig::seed_recipe()
    };
    let err = add_lora(load::<B>(&model_dir("gemma3")), &config, 0).unwrap_err();
    assert!(err.to_string().contains("lm_head"), "{err}");
}

#[test]
fn targets_peft_would_adapt_beyond_the_seven_projections_are_refused_by_name() {
    // "all-linear" would also adapt Gemma 3n's and 4's per-layer input projections (and AltUp, Laurel) and
    // Gemma 4's expert router, which Ember's adapters do not cover.
    for (base, target, module) in [
        ("gemma3n", Targets::AllLinear, "model.per_layer_model_projection"),
        (
            "gemma4",
            Targets::AllLinear,
            "model.language_model.per_layer_model_projection",
        ),
        (
            "gemma4-moe",
            Targets::Names(vec!["q_proj".into(), "proj".into()]),
            "model.layers.0.router.proj",
        ),
        (
            "gemma3n",
            Targets::Regex(r".*\.linear_left".into()),
            "model.layers.0.laurel.linear_left",
        ),
    ] {
        let config = LoraConfig {
            target_modules: target,
            ..LoraConfig::seed_recipe()
        };
        let err = add_lora(load::<B>(&model_dir(base)), &config, 0).unwrap_err();
        assert!(err.to_string().contains(module), "{base}: {err}");
    }
    // The seven by name are what Ember adapts there, the shared layers' absent k/v included.
    let model = add_lora(load::<B>(&model_dir("gemma3n")), &LoraConfig::seed_recipe(), 0).unwrap();
    let layer = &model.model.layers[5];
    assert!(layer.self_attn.k_proj.is_none() && layer.self_attn.q_proj.lora.is_some());
}

#[test]
fn merging_into_a_4bit_base_adds_to_its_dequantized_weights() {
    // The pre-quantized fixture: the base an adapter trained with load_in_4bit saw.
    let dir = repo().join("fixtures/bnb4/models/gemma3-nf4");
    let model = add_lora(load::<B>(&dir), &random_config(), 9).unwrap();
    let base = model.model.layers[1].mlp.up_proj.weight.val();
    let delta = model.model.layers[1].mlp.up_proj.lora.as_ref().unwrap().delta_weight();
    let with_adapter = logits_of(&model, "gemma3");
    let merged = merge_lora(model).unwrap();
    assert!(matches!(
        merged.model.layers[1].mlp.up_proj.weight,
        FrozenWeight::Dense(_)
    ));
    let sum = merged.model.layers[1].mlp.up_proj.weight.val();
    let expected: Vec<f32> = (base + delta).into_data().into_vec().unwrap();
    assert_eq!(sum.into_data().into_vec::<f32>().unwrap(), expected);
    assert!(max_abs_diff(&logits_of(&merged, "gemma3"), &with_adapter) < 1e-4);
}

#[test]
fn merged_model_and_its_export_compute_what_base_plus_adapter_computes() {
    let model = add_lora(load::<B>(&model_dir("gemma2")), &random_config(), 9).unwrap();
    let with_adapter = logits_of(&model, "gemma2");
    let merged = merge_lora(model).unwrap();
    let merged_logits = logits_of(&merged, "gemma2");
    assert!(max_abs_diff(&merged_logits, &with_adapter) < 1e-4);

    let out = tempfile::tempdir().unwrap();
    let export = out.path().join("merged");
    // A small shard limit forces several shards and an index, as a real export has.
    export_checkpoint(
        &merged,
        &ember_model::ModelSource::open(&model_dir("gemma2")).unwrap(),
        &export,
        DType::F32,
        200_000,
    )
    .unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("model.safetensors.index.json")).unwrap()).unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
    ] {
        assert!(export.join(file).exists(), "{file}");
    }
    let reloaded = load::<B>(&export);
    assert_eq!(logits_of(&reloaded, "gemma2"), merged_logits);
}
