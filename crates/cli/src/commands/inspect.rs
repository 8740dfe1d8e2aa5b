use std::path::PathBuf;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::backend::NdArray;
use ember_model::gguf::GgufFile;
use ember_model::{Checkpoint, GemmaConfig, LayerType, ModelSource};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory, or a GGUF file.
    pub dir: PathBuf,
}

const GIB: f64 = (1u64 << 30) as f64;

pub fn run(args: Args) -> Result<()> {
    let source = ModelSource::open(&args.dir)?;
    let config = source.config();
    let on_disk = match source.gguf() {
        Some(file) => gguf_types(file),
        None => {
            let dtype = config.torch_dtype.as_deref().unwrap_or("unstated");
            match Checkpoint::open(&args.dir) {
                Ok(checkpoint) => format!("{dtype} ({:.2} GiB of tensors)", checkpoint.total_bytes() as f64 / GIB),
                Err(_) => format!("{dtype} (no readable weights)"),
            }
        }
    };
    let params = config.parameter_count();
    let layers: String = config
        .layer_types
        .iter()
        .map(|t| match t {
            LayerType::Full => 'G',
            LayerType::Sliding => 'l',
        })
        .collect();
    let kv_per_token = 2 * config.num_hidden_layers() * config.num_key_value_heads * config.head_dim;
    println!("checkpoint     {}", args.dir.display());
    println!("architecture   {:?}", config.family);
    println!(
        "layers         {} ({layers}: G = global attention, l = sliding window of {})",
        config.num_hidden_layers(),
        config.sliding_window.map_or("-".to_string(), |w| w.to_string())
    );
    println!(
        "attention      {} query heads, {} key/value heads, head_dim {}",
        config.num_attention_heads, config.num_key_value_heads, config.head_dim
    );
    println!(
        "hidden         {} (MLP {})",
        config.hidden_size, config.intermediate_size
    );
    println!("vocabulary     {}", config.vocab_size);
    println!(
        "rope           theta {} (x{} linear) global, theta {} sliding",
        config.rope_full.theta, config.rope_full.factor, config.rope_sliding.theta
    );
    println!(
        "soft-capping   attention {:?}, final logits {:?}; query scale {}^-0.5",
        config.attn_logit_softcapping, config.final_logit_softcapping, config.query_pre_attn_scalar
    );
    println!("parameters     {params} ({:.2} B)", params as f64 / 1e9);
    println!("dtype on disk  {on_disk}");
    println!(
        "memory         weights {:.2} GiB in bf16, {:.2} GiB in f32; KV cache {:.1} MiB per 1k tokens in bf16",
        params as f64 * 2.0 / GIB,
        params as f64 * 4.0 / GIB,
        (kv_per_token * 2 * 1024) as f64 / (1 << 20) as f64
    );
    let problems = problems(&source);
    if problems.is_empty() {
        println!("checked        every tensor's presence, shape and dtype; the tokenizer fits vocab_size");
        return Ok(());
    }
    for problem in &problems {
        println!("PROBLEM        {problem}");
    }
    bail!(
        "{} problem(s) in {}: loading it for generation, training or export would fail on the first",
        problems.len(),
        args.dir.display()
    )
}

/// What loading the model for generation or training would fail on: its tensors against the
/// config (presence, shape, dtype, none left over), and its tokenizer against `vocab_size`.
fn problems(source: &ModelSource) -> Vec<String> {
    let mut problems: Vec<String> = match source.check_tensors::<NdArray>(&Default::default()) {
        Ok(tensors) => tensors.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    };
    match source.tokenizer() {
        Ok(tokenizer) => problems.extend(vocabulary_problem(tokenizer.vocab_size(), source.config())),
        Err(e) => problems.push(format!("{e} (generation and training need the tokenizer)")),
    }
    problems
}

/// A tokenizer whose ids reach past the embedding's rows: those tokens have no embedding.
fn vocabulary_problem(tokenizer_ids: usize, config: &GemmaConfig) -> Option<String> {
    (tokenizer_ids > config.vocab_size).then(|| {
        format!(
            "the tokenizer has {tokenizer_ids} ids but vocab_size is {}: ids from {} on have no embedding \
             row (training refuses such samples, generation fails on them); use the model's own tokenizer",
            config.vocab_size, config.vocab_size
        )
    })
}

/// How many tensors of each ggml type a GGUF file holds (`Q5_0 ×81, F32 ×109`) and their size.
fn gguf_types(file: &GgufFile) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for tensor in file.tensors() {
        *counts.entry(tensor.type_name()).or_default() += 1;
    }
    let types: Vec<String> = counts.iter().map(|(name, n)| format!("{name} x{n}")).collect();
    let bytes = std::fs::metadata(file.path()).map_or(0, |m| m.len());
    format!("GGUF: {} ({:.2} GiB file)", types.join(", "), bytes as f64 / GIB)
}
