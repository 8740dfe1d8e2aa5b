//! Ember against transformers: logits, KV-cache decoding and greedy generation on the
//! fixture checkpoints (f32, CPU).

use crate::common::{
    B, MODELS, MODELS_4X, assert_cached_decoding_matches, assert_greedy_generation_matches, assert_logits_match,
    copy_fixture, fixture, load,
};
use ember_model::GemmaConfig;

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        assert_logits_match(&fixture(name), name);
    }
}

#[test]
fn logits_match_transformers_with_a_4x_config() {
    for name in MODELS_4X {
        let dir = copy_fixture(name);
        std::fs::copy(
            dir.path().join("config.transformers4.json"),
            dir.path().join("config.json"),
        )
        .unwrap();
        assert_logits_match(dir.path(), name);
    }
}

#[test]
fn parameter_count_matches_the_loaded_model() {
    use burn::module::Module;
    for name in MODELS {
        let dir = fixture(name);
        let model = load(&dir);
        assert_eq!(
            model.num_params(),
            GemmaConfig::from_file(dir.join("config.json"))
                .unwrap()
                .parameter_count(),
            "{name}"
        );
    }
}

#[test]
fn transformers_4x_and_5x_configs_describe_the_same_model() {
    for name in MODELS_4X {
        let dir = fixture(name);
        let mut v5 = GemmaConfig::from_file(dir.join("config.json")).unwrap();
        let v4 = GemmaConfig::from_file(dir.join("config.transformers4.json")).unwrap();
        v5.torch_dtype = None; // 5.x records the dtype it saved; the 4.x file has none
        assert_eq!(v5, v4, "{name}");
    }
}

#[test]
fn kv_cache_decoding_matches_full_sequence_logits() {
    for name in MODELS {
        assert_cached_decoding_matches::<B>(name, &Default::default());
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in MODELS {
        assert_greedy_generation_matches::<B>(name, &Default::default());
    }
}

#[test]
fn parameter_paths_are_the_checkpoint_names() {
    let dir = fixture("gemma2");
    let model = load(&dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let checkpoint = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut expected: Vec<String> = checkpoint.names().into_iter().map(String::from).collect();
    let mut names: Vec<String> = ember_model::named_params(&model).into_iter().map(|p| p.name).collect();
    expected.sort();
    names.sort();
    assert_eq!(names, expected);
}

#[test]
fn gemma3n_reads_ids_past_its_per_layer_table_as_row_0() {
    // As transformers 5.24's Gemma 3n text model (and 5.17's multimodal one) do: audio and
    // image token ids lie past the per-layer table.
    use burn::tensor::{Distribution, Int, Tensor};
    let model = load(&fixture("gemma3n"));
    let device = Default::default();
    let rows = model.config.per_layer_inputs.unwrap().vocab_size as i64;
    let embeds = Tensor::<B, 3>::random([1, 3, model.config.hidden_size], Distribution::Default, &device);
    let inputs = |ids: [i64; 3]| {
        let ids = Tensor::<B, 1, Int>::from_data(ids.as_slice(), &device).reshape([1, 3]);
        let out = model
            .model
            .per_layer_inputs(model.config.family, ids, embeds.clone())
            .unwrap();
        out.into_data().into_vec::<f32>().unwrap()
    };
    assert_eq!(inputs([0, 7, rows + 5]), inputs([0, 7, 0]));
    assert_ne!(inputs([0, 7, rows - 1]), inputs([0, 7, 0]));
}
