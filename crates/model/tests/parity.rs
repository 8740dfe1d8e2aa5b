//! Ember against transformers: logits, KV-cache decoding and greedy generation on the
//! fixture checkpoints (f32, CPU).

mod common;

use burn::tensor::{Int, Tensor};
use common::{B, MODELS, Reference, assert_logits_match, copy_fixture, fixture, load, max_abs_diff};
use ember_model::{ForwardInput, GemmaConfig, GemmaTokenizer, GenerationConfig, SamplingConfig};

use common::{TOLERANCE, to_vec};

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        assert_logits_match(&fixture(name), name);
    }
}

#[test]
fn logits_match_transformers_with_a_4x_config() {
    for name in MODELS {
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
    for name in MODELS {
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
        let model = load(&fixture(name));
        let r = Reference::read(&fixture(name));
        let device = Default::default();
        let mut cache = model.new_cache(32);
        // Row 0 has no padding. Feed a 5-token prefix at once, then one token per step.
        let prefix = 5;
        let mut worst = 0f32;
        let mut start = 0;
        while start < r.seq {
            let len = if start == 0 { prefix } else { 1 };
            let chunk = &r.input_ids[start..start + len];
            let ids = Tensor::<B, 1, Int>::from_data(chunk, &device).reshape([1, len]);
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
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in MODELS {
        let dir = fixture(name);
        let model = load(&dir);
        let tokenizer = GemmaTokenizer::from_dir(&dir).unwrap();
        let r = Reference::read(&dir);
        let config = GenerationConfig {
            max_new_tokens: r.greedy_new_tokens.len(),
            stop_tokens: tokenizer.stop_tokens().to_vec(),
            sampling: SamplingConfig::default(),
        };
        let mut streamed = Vec::new();
        let tokens = model
            .generate(&r.greedy_prompt, &config, &Default::default(), |t| {
                streamed.push(t);
                Ok(())
            })
            .unwrap();
        assert_eq!(tokens, r.greedy_new_tokens, "{name}");
        assert_eq!(streamed, tokens, "{name}: every token is streamed once, in order");
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
