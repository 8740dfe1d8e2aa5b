//! A LoRA GGUF export on its base model's GGUF export, run by llama.cpp itself (node-llama-cpp's
//! prebuilt binaries, `fixtures/run_llama_cpp.mjs`), continues prompts with the greedy tokens
//! Ember computes with the PEFT adapter: for one alpha (plain), rsLoRA and per-module patterns.

use crate::common::{B, model_dir, repo};
use burn::tensor::{DType, Int, Tensor};
use ember_lora::{export_gguf_lora, load_adapter};
use ember_model::gguf::{GgufFile, GgufFileType, Value, export_gguf};
use ember_model::{
    AttentionMask, ForwardInput, GemmaForCausalLM, GenerationConfig, LoadOptions, ModelSource, SamplingConfig,
};
use ember_testkit::llama_cpp::{Step, greedy_agreement};

fn tokens(steps: &[Step]) -> Vec<u32> {
    steps.iter().map(|s| s.token).collect()
}

/// Ember's greedy steps after `prompt` (as `gguf_export.rs` computes them), each with its
/// runner-up and logit gap.
fn steps(model: &GemmaForCausalLM<B>, prompt: &[u32], stops: &[u32]) -> Vec<Step> {
    let config = GenerationConfig {
        max_new_tokens: 16,
        stop_tokens: Vec::new(),
        sampling: SamplingConfig::default(),
    };
    let tokens: Vec<u32> = model
        .generate(prompt, &config, &Default::default(), |_| Ok(()))
        .unwrap()
        .into_iter()
        .take_while(|t| !stops.contains(t))
        .collect();
    let sequence: Vec<i64> = prompt.iter().chain(&tokens).map(|&t| t as i64).collect();
    let device = Default::default();
    let n = sequence.len();
    let input = ForwardInput {
        input_ids: Tensor::<B, 1, Int>::from_data(sequence.as_slice(), &device).reshape([1, n]),
        positions: Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]),
        mask: AttentionMask::causal(1, 0, n, n, &device),
    };
    let rows = model.forward(input, None).into_data().into_vec::<f32>().unwrap();
    ember_testkit::llama_cpp::steps(&rows, model.config.vocab_size, prompt.len(), &tokens)
}

#[test]
fn llama_cpp_applies_the_lora_gguf_as_ember_applies_the_peft_adapter() {
    let Some(root) = ember_testkit::llama_cpp::root() else {
        return;
    };
    let (mut compared, mut total) = (0, 0);
    for (adapter, base) in [("plain", "gemma3"), ("rslora", "gemma3"), ("patterns", "gemma2")] {
        let source = ModelSource::open(&model_dir(base)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base_gguf = dir.path().join("base.gguf");
        let lora_gguf = dir.path().join("adapter.gguf");
        let model = source
            .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
            .unwrap();
        export_gguf(&model, &source, &base_gguf, GgufFileType::F32).unwrap();
        let (model, _) = load_adapter(model, &repo().join("fixtures/lora").join(adapter)).unwrap();
        export_gguf_lora(&model, source.path(), &lora_gguf).unwrap();

        let file = GgufFile::open(&lora_gguf).unwrap();
        assert_eq!(file.get("general.type"), Some(&Value::String("adapter".into())));
        assert_eq!(file.get("adapter.type"), Some(&Value::String("lora".into())));
        // llama.cpp scales by alpha / r: one such alpha when every PEFT scale has that form
        // (rsLoRA's 8 / sqrt(4) = 16 / 4); otherwise 0 (scale 1) and each B carries its scale.
        let alpha = match adapter {
            "plain" => 8.0,
            "rslora" => 16.0,
            _ => 0.0,
        };
        assert_eq!(file.get("adapter.lora.alpha"), Some(&Value::F32(alpha)), "{adapter}");
        let a = file.tensor("blk.0.attn_q.weight.lora_a").unwrap();
        let b = file.tensor("blk.0.attn_q.weight.lora_b").unwrap();
        let rank = if adapter == "patterns" { 2 } else { 4 };
        assert_eq!(
            (a.shape(), b.shape()),
            (vec![rank, 64], vec![64, rank]),
            "{adapter}: PEFT's shapes"
        );

        let tokenizer = source.tokenizer().unwrap();
        let prompts: Vec<Vec<u32>> = ["The capital of France is", "def add(a, b):\n    return", "1, 2, 3,"]
            .iter()
            .map(|t| tokenizer.encode(t).unwrap())
            .collect();
        let stops = tokenizer.stop_tokens().to_vec();
        let request = serde_json::json!({
            "model": base_gguf,
            "lora": {"path": lora_gguf, "scale": 1.0},
            "greedy": {"prompts": prompts, "tokens": 16},
        });
        let theirs: Vec<Vec<u32>> =
            serde_json::from_value(ember_testkit::llama_cpp::run(&root, &request)["greedy"].clone()).unwrap();
        let base = source
            .load::<B>(&LoadOptions::new(DType::F32), &Default::default())
            .unwrap();
        let mut changed = false;
        for (prompt, theirs) in prompts.iter().zip(&theirs) {
            let ours = steps(&model, prompt, &stops);
            changed |= tokens(&ours) != tokens(&steps(&base, prompt, &stops));
            // Near-ties (top-2 logits closer than 1e-3) may go either way in f32.
            compared += greedy_agreement(&ours, theirs, 1e-3).unwrap_or_else(|e| panic!("{adapter} {prompt:?}: {e}"));
            total += ours.len();
        }
        assert!(
            changed,
            "{adapter}: the adapter changes none of the base model's continuations"
        );
    }
    eprintln!("llama.cpp with the LoRA GGUF gave Ember's greedy tokens for {compared} of {total} (up to near-ties)");
    assert!(compared * 10 >= total * 9, "only {compared} of {total} compared");
}
