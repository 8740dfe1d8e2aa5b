//! A LoRA GGUF export on its base model's GGUF export, run by llama.cpp itself (node-llama-cpp's
//! prebuilt binaries, `fixtures/run_llama_cpp.mjs`), continues prompts with the greedy tokens
//! Ember computes with the PEFT adapter: for one alpha (plain), rsLoRA and per-module patterns.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use burn::tensor::DType;
use common::{B, model_dir, repo};
use ember_lora::{export_gguf_lora, load_adapter};
use ember_model::gguf::{GgufFile, GgufFileType, Value, export_gguf};
use ember_model::{GenerationConfig, LoadOptions, ModelSource, SamplingConfig};

fn node_llama_cpp() -> Option<PathBuf> {
    let addon =
        ember_testkit::asset("node-llama-cpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node")?;
    addon.ancestors().nth(6).map(Path::to_path_buf)
}

fn llama_cpp_greedy(root: &Path, model: &Path, lora: &Path, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let request = serde_json::json!({
        "model": model,
        "lora": {"path": lora, "scale": 1.0},
        "greedy": {"prompts": prompts, "tokens": 16},
    });
    let mut child = Command::new("node")
        .arg(repo().join("fixtures/run_llama_cpp.mjs"))
        .env("EMBER_NODE_LLAMA_CPP", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "llama.cpp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(answer["greedy"].clone()).unwrap()
}

#[test]
fn llama_cpp_applies_the_lora_gguf_as_ember_applies_the_peft_adapter() {
    let Some(root) = node_llama_cpp() else { return };
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
        // One alpha when PEFT's scales are alpha / r; otherwise each B carries its scale.
        let alpha = if adapter == "plain" { 8.0 } else { 0.0 };
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
        let config = GenerationConfig {
            max_new_tokens: 16,
            stop_tokens: Vec::new(),
            sampling: SamplingConfig::default(),
        };
        let ours: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| model.generate(p, &config, &Default::default(), |_| Ok(())).unwrap())
            .collect();
        assert_eq!(
            llama_cpp_greedy(&root, &base_gguf, &lora_gguf, &prompts),
            ours,
            "{adapter}"
        );
    }
}
