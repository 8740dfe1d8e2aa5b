//! Adapters on Gemma 4's expert weights (PEFT's `target_parameters`): PEFT's keys and layout on
//! disk, saving and loading, merging, and the settings Ember refuses by name. Against PEFT itself:
//! `peft_parity.rs` (its adapter's logits and gradients) and `roundtrip.rs` (PEFT loads Ember's).

use crate::common::{B, Batch, load, model_dir, to_vec};
use burn::tensor::Tensor;
use ember_lora::{
    Init, LoraConfig, Targets, adapter_parameter_count, adapter_tensors, add_lora, export_gguf_lora, load_adapter,
    merge_lora, save_adapter,
};
use ember_model::GemmaForCausalLM;
use ember_testkit::max_abs_diff;

const EXPERTS: [&str; 2] = ["experts.gate_up_proj", "experts.down_proj"];

fn experts_config(parameters: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 3,
        lora_alpha: 6.0,
        init_lora_weights: Init::Random,
        target_modules: Targets::Names(vec!["q_proj".into(), "o_proj".into()]),
        target_parameters: parameters.iter().map(|p| p.to_string()).collect(),
        rank_pattern: vec![("experts.down_proj".into(), 2)],
        ..LoraConfig::default()
    }
}

fn logits_of(model: &GemmaForCausalLM<B>) -> Vec<f32> {
    to_vec(model.forward(Batch::of("gemma4-moe").input(), None))
}

#[test]
fn expert_adapters_are_saved_under_peft_keys_and_load_back_exactly() {
    // gemma4-moe: 8 experts, hidden 64, moe_intermediate_size 16, 5 layers.
    for (parameters, keys) in [
        (
            &EXPERTS[..],
            [
                ("experts.base_layer.lora_A.weight", vec![24, 64]),
                ("experts.base_layer.lora_B.weight", vec![32, 24]),
                ("experts.lora_A.weight", vec![16, 16]),
                ("experts.lora_B.weight", vec![64, 16]),
            ]
            .as_slice(),
        ),
        // One weight alone: its wrapper is the only one, not nested.
        (
            &EXPERTS[1..],
            [
                ("experts.lora_A.weight", vec![16, 16]),
                ("experts.lora_B.weight", vec![64, 16]),
            ]
            .as_slice(),
        ),
    ] {
        let config = experts_config(parameters);
        let model = add_lora(load::<B>(&model_dir("gemma4-moe")), &config, 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&model, &config, dir.path()).unwrap();
        let saved = adapter_tensors(&model).unwrap();
        for layer in 0..5 {
            for (key, shape) in keys {
                let key = format!("base_model.model.model.layers.{layer}.{key}");
                assert_eq!(saved.get(&key).map(|t| &t.0), Some(shape), "{parameters:?}: {key}");
            }
        }
        // q and o, A and B, on 5 layers, and the experts'.
        assert_eq!(saved.len(), 5 * (4 + keys.len()), "{parameters:?}");

        let (loaded, loaded_config) = load_adapter(load::<B>(&model_dir("gemma4-moe")), dir.path()).unwrap();
        assert_eq!(loaded_config, config);
        assert_eq!(adapter_tensors(&loaded).unwrap(), saved, "{parameters:?}");
        assert_eq!(logits_of(&loaded), logits_of(&model), "{parameters:?}");
    }
}

#[test]
fn expert_adapters_change_the_logits_and_count_their_parameters() {
    let base = load::<B>(&model_dir("gemma4-moe"));
    let before = logits_of(&base);
    let config = LoraConfig {
        target_modules: Targets::Names(Vec::new()),
        ..experts_config(&EXPERTS)
    };
    let model = add_lora(base, &config, 7).unwrap();
    // Per layer: gate_up_proj r·E·(in + out) = 3·8·(64 + 32), down_proj 2·8·(16 + 64).
    assert_eq!(adapter_parameter_count(&model), 5 * (3 * 8 * 96 + 2 * 8 * 80));
    let after = logits_of(&model);
    assert!(
        max_abs_diff(&after, &before) > 1e-3,
        "the experts' adapters change nothing"
    );
}

#[test]
fn merging_expert_adapters_adds_each_experts_delta_to_its_slice() {
    let model = add_lora(load::<B>(&model_dir("gemma4-moe")), &experts_config(&EXPERTS), 11).unwrap();
    let with_adapter = logits_of(&model);
    let experts = model.model.layers[2].experts.as_ref().unwrap();
    let lora = experts.lora.gate_up_proj.as_ref().unwrap();
    // Expert 5's delta from PEFT's layout by hand: A_e rows 5·r.., B_e columns 5, 5 + 8, ….
    let (r, e) = (3, 5);
    let a = lora.a.val().narrow(0, e * r, r);
    let columns: Vec<i64> = (0..r).map(|k| (k * 8 + e) as i64).collect();
    let b = lora
        .b
        .val()
        .select(1, Tensor::from_data(columns.as_slice(), &Default::default()));
    let delta = b.matmul(a) * lora.scale;
    let base = experts.gate_up_proj.val().narrow(0, e, 1).reshape([32, 64]);
    let expected = to_vec(base + delta);

    let merged = merge_lora(model).unwrap();
    let experts = merged.model.layers[2].experts.as_ref().unwrap();
    assert!(experts.lora.gate_up_proj.is_none() && experts.lora.down_proj.is_none());
    let slice = to_vec(experts.gate_up_proj.val().narrow(0, e, 1).reshape([32, 64]));
    assert!(max_abs_diff(&slice, &expected) < 1e-6);
    assert!(max_abs_diff(&logits_of(&merged), &with_adapter) < 1e-4);
}

#[test]
fn expert_settings_peft_cannot_apply_are_refused_by_name() {
    let refused = |config: LoraConfig, model: &str| {
        add_lora(load::<B>(&model_dir(model)), &config, 0)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = refused(
        LoraConfig {
            lora_dropout: 0.1,
            ..experts_config(&EXPERTS)
        },
        "gemma4-moe",
    );
    assert!(err.contains("lora_dropout") && err.contains("0.1"), "{err}");
    let err = refused(
        LoraConfig {
            layers_to_transform: Some(vec![1]),
            ..experts_config(&EXPERTS)
        },
        "gemma4-moe",
    );
    assert!(
        err.contains("layers_to_transform") && err.contains("model.layers.3.experts"),
        "{err}"
    );
    // A name for no expert weight, and one that also selects a projection's weight.
    let err = refused(experts_config(&["experts.up_proj"]), "gemma4-moe");
    assert!(
        err.contains("target_parameters") && err.contains("`experts.up_proj`"),
        "{err}"
    );
    let err = refused(experts_config(&["gate_up_proj", "q_proj.weight"]), "gemma4-moe");
    assert!(err.contains("model.layers.0.self_attn.q_proj.weight"), "{err}");
    let err = refused(experts_config(&EXPERTS), "gemma3");
    assert!(err.contains("has no experts"), "{err}");

    // llama.cpp's LoRA files have no place Ember writes expert adapters to.
    let model = add_lora(load::<B>(&model_dir("gemma4-moe")), &experts_config(&EXPERTS), 0).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = export_gguf_lora(&model, &model_dir("gemma4-moe"), &out.path().join("a.gguf")).unwrap_err();
    assert!(err.to_string().contains("model.layers.0.experts"), "{err}");
}

#[test]
fn an_adapter_config_with_parameters_and_no_modules_adapts_only_the_parameters() {
    // PEFT writes `target_modules: null` when only parameters were named, and then adapts no
    // module (its table of default modules has no text Gemma 4).
    let json = serde_json::json!({"r": 2, "target_modules": null, "target_parameters": EXPERTS});
    let config = LoraConfig::from_json(&json, std::path::Path::new("adapter_config.json"), false).unwrap();
    assert_eq!(config.target_modules, Targets::Names(Vec::new()));
    let model = add_lora(load::<B>(&model_dir("gemma4-moe")), &config, 0).unwrap();
    let tensors = adapter_tensors(&model).unwrap();
    assert_eq!(tensors.len(), 5 * 4);
    assert!(tensors.keys().all(|k| k.contains(".experts.")), "{tensors:?}");
    assert_eq!(config.to_json()["target_parameters"], serde_json::json!(EXPERTS));
}

#[test]
fn a_peft_expert_adapter_saved_again_by_ember_is_the_same_tensors() {
    let fixture = crate::common::repo().join("fixtures/lora/gemma4-moe-experts");
    let (model, config) = load_adapter(load::<B>(&model_dir("gemma4-moe")), &fixture).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, &config, out.path()).unwrap();
    let read = |dir: &std::path::Path| {
        let mut tensors = ember_testkit::read_f32(&dir.join("adapter_model.safetensors"));
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    };
    let (ours, peft) = (read(out.path()), read(&fixture));
    assert!(
        peft.iter()
            .any(|(name, _, _)| name.ends_with("experts.base_layer.lora_B.weight"))
    );
    assert_eq!(ours, peft);
}
