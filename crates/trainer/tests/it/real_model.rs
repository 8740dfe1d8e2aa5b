//! A short real fine-tune on the CPU: Gemma 3 270M, loaded straight from the Q4_K_M GGUF that
//! `cargo xtask fetch-assets --with-weights` fetches, gets LoRA adapters on its seven projections
//! and trains on a few rows of the Alpaca demo. The training loss and the loss on held-out rows
//! fall, and the saved adapter generates. llama.cpp (node-llama-cpp's binaries) then runs the
//! fine-tune exported as GGUF, the base's f32 GGUF with the adapter's LoRA GGUF and the merged
//! f32 GGUF, and continues prompts with Ember's greedy tokens. Returns early, saying so, where
//! the assets are absent.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::DType;
use burn::tensor::{Int, Tensor};
use ember_data::alpaca_seed_prompt;
use ember_lora::{export_gguf_lora, load_adapter, merge_lora};
use ember_model::gguf::{GgufFileType, export_gguf};
use ember_model::{AttentionMask, ForwardInput, GemmaForCausalLM, GenerationConfig, LoadOptions, SamplingConfig};
use ember_testkit::asset;
use ember_trainer::config::RunConfig;
use ember_trainer::eval::evaluate;
use ember_trainer::kernels::BurnKernels;
use ember_trainer::trainer::{Start, train};

type B = NdArray<f32>;

/// Four training rows seen twice each (two epochs of two batches), so the loss of the second
/// epoch is measured on the same text as the first; eight other rows are held out.
const TRAIN_ROWS: std::ops::Range<usize> = 0..4;
const EVAL_ROWS: std::ops::Range<usize> = 500..508;
const STEPS: usize = 4;
const BATCH: usize = 2;
/// Eval batches are padded to a multiple of 8 tokens, as on a CPU run (`pad_to_multiple_of`).
const PAD_TO: usize = 8;

fn write_rows(rows: &[serde_json::Value], path: &Path) {
    std::fs::write(path, serde_json::to_string(rows).unwrap()).unwrap();
}

fn config(model: &Path, train: &Path, eval: &Path, out: &Path) -> RunConfig {
    let text = format!(
        r#"
[model]
path = "{model}"

[lora]
r = 8
lora_alpha = 16
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

[data]
path = "{train}"
max_seq_length = 128
eval = {{ path = "{eval}" }}

[training]
output_dir = "{out}"
per_device_train_batch_size = {BATCH}
max_steps = {STEPS}
learning_rate = 1e-3
lr_scheduler_type = "constant"
optim = "adamw_torch"
gradient_checkpointing = true
logging_steps = 1
seed = 1357
"#,
        model = model.display(),
        train = train.display(),
        eval = eval.display(),
        out = out.display(),
    );
    RunConfig::parse(&text, Path::new("real_model.toml")).unwrap()
}

#[test]
fn gemma3_270m_fine_tunes_on_alpaca_and_its_adapter_generates() {
    let (Some(gguf), Some(alpaca)) = (
        asset("weights/gemma-3-270m-q4_k_m.gguf"),
        asset("data/alpaca_en_demo.json"),
    ) else {
        return;
    };
    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&alpaca).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (train_path, eval_path, out) = (
        dir.path().join("train.json"),
        dir.path().join("eval.json"),
        dir.path().join("out"),
    );
    write_rows(&rows[TRAIN_ROWS], &train_path);
    write_rows(&rows[EVAL_ROWS], &eval_path);
    let config = config(&gguf, &train_path, &eval_path, &out);

    // The held-out loss of the base model: the run starts from it, since PEFT's B is zero.
    let device = Default::default();
    let base = GemmaForCausalLM::<B>::load(&gguf, &LoadOptions::new(DType::F32), &device).unwrap();
    let source = ember_model::ModelSource::open(&gguf).unwrap();
    let tokenizer = source.tokenizer().unwrap();
    // The base as llama.cpp will run it under the LoRA GGUF (`ember export --format gguf`).
    let base_gguf = dir.path().join("base.gguf");
    export_gguf(&base, &source, &base_gguf, GgufFileType::F32).unwrap();
    let eval_set = ember_data::load(&config.data, &tokenizer).unwrap().eval.unwrap();
    let before = evaluate(&base, &BurnKernels, &eval_set, BATCH, tokenizer.pad_id(), PAD_TO).unwrap();
    // A pretrained model predicts Alpaca's text at about 2 nats a token (2.06 on the demo's
    // first 16 rows); a wrong forward or head gives far more.
    assert!(before.loss < 3.0, "the base model's held-out loss is {}", before.loss);

    let mut losses = Vec::new();
    let summary = train::<Autodiff<B>>(
        &config,
        Start::Fresh,
        &device,
        DType::F32,
        &BurnKernels,
        &AtomicBool::new(false),
        |log| losses.push(log.loss),
    )
    .unwrap();
    let after = summary.eval.unwrap();
    eprintln!(
        "train losses {losses:?}; held-out loss {:.4} -> {:.4} ({} tokens)",
        before.loss, after.loss, after.tokens
    );
    assert_eq!(losses.len(), STEPS);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let epoch = |e: usize| losses[e * 2..e * 2 + 2].iter().sum::<f64>() / 2.0;
    assert!(epoch(1) < epoch(0) * 0.9, "the training loss did not fall: {losses:?}");
    assert!(
        after.loss < before.loss,
        "the held-out loss did not fall: {} -> {}",
        before.loss,
        after.loss
    );

    // The saved adapter is the trained one: on the base it gives the run's held-out loss, and
    // it generates.
    let (model, _) = load_adapter(base, &summary.last_checkpoint).unwrap();
    let reloaded = evaluate(&model, &BurnKernels, &eval_set, BATCH, tokenizer.pad_id(), PAD_TO).unwrap();
    assert!((reloaded.loss - after.loss).abs() < 1e-4, "{reloaded:?} vs {after:?}");
    let prompt = alpaca_seed_prompt("Name a primary color.", "");
    let config = GenerationConfig {
        max_new_tokens: 8,
        stop_tokens: tokenizer.stop_tokens().to_vec(),
        sampling: SamplingConfig::default(),
    };
    let tokens = model
        .generate(&tokenizer.encode(&prompt).unwrap(), &config, &device, |_| Ok(()))
        .unwrap();
    let text = tokenizer.decode(&tokens).unwrap();
    eprintln!("generated: {text:?}");
    assert!(!tokens.is_empty());

    // llama.cpp continues prompts with Ember's greedy tokens: the base GGUF with the LoRA
    // GGUF, then the merged model's GGUF.
    let Some(root) = ember_testkit::llama_cpp::root() else {
        return;
    };
    let prompts: Vec<Vec<u32>> = [
        prompt.as_str(),
        "The capital of France is",
        "def add(a, b):\n    return",
        "Once upon a time, in a land far away, there lived a",
    ]
    .iter()
    .map(|p| tokenizer.encode(p).unwrap())
    .collect();
    let stops = tokenizer.stop_tokens();
    let lora_gguf = dir.path().join("adapter.gguf");
    export_gguf_lora(&model, &gguf, &lora_gguf).unwrap();
    let request = serde_json::json!({"model": base_gguf, "lora": {"path": lora_gguf, "scale": 1.0}});
    llama_cpp_continues_as_ember(&root, request, &model, &prompts, stops, "base + LoRA GGUF");
    std::fs::remove_file(&base_gguf).unwrap();
    let merged = merge_lora(model).unwrap();
    let merged_gguf = dir.path().join("merged.gguf");
    export_gguf(&merged, &source, &merged_gguf, GgufFileType::F32).unwrap();
    let request = serde_json::json!({"model": merged_gguf});
    llama_cpp_continues_as_ember(&root, request, &merged, &prompts, stops, "merged f32 GGUF");
}

/// llama.cpp's 16 greedy tokens after each prompt (`request` names the files) are `model`'s,
/// read along llama.cpp's continuation in one forward pass (`greedy_along`), up to a near-tie
/// (Ember's top two within 1e-3); nearly all must be compared.
fn llama_cpp_continues_as_ember(
    root: &Path,
    mut request: serde_json::Value,
    model: &GemmaForCausalLM<B>,
    prompts: &[Vec<u32>],
    stops: &[u32],
    what: &str,
) {
    const TOKENS: usize = 16;
    request["greedy"] = serde_json::json!({"prompts": prompts, "tokens": TOKENS});
    let theirs: Vec<Vec<u32>> =
        serde_json::from_value(ember_testkit::llama_cpp::run(root, &request)["greedy"].clone()).unwrap();
    let device = Default::default();
    let (mut compared, mut total) = (0, 0);
    for (prompt, theirs) in prompts.iter().zip(&theirs) {
        let ids: Vec<i64> = prompt.iter().chain(theirs).map(|&i| i as i64).collect();
        let n = ids.len();
        let input = ForwardInput {
            input_ids: Tensor::<B, 1, Int>::from_data(ids.as_slice(), &device).reshape([1, n]),
            positions: Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]),
            mask: AttentionMask::causal(1, 0, n, n, &device),
        };
        let rows = model.forward(input, None).into_data().into_vec::<f32>().unwrap();
        let vocab = model.config.vocab_size;
        compared += ember_testkit::llama_cpp::greedy_along(&rows, vocab, prompt.len(), theirs, TOKENS, 1e-3, stops)
            .unwrap_or_else(|e| panic!("{what}, prompt {prompt:?}: {e}"));
        total += theirs.len();
    }
    eprintln!("{what}: llama.cpp gave Ember's greedy tokens for {compared} of {total}");
    assert!(
        compared * 10 >= total * 9,
        "{what}: only {compared} of {total} compared"
    );
}
