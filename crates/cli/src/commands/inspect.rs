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
    // Layers that share another's keys and values cache none.
    let kv_per_token: usize = (0..config.num_hidden_layers())
        .filter(|&i| config.kv_source(i).is_none())
        .map(|i| {
            let layer_type = config.layer_types[i];
            2 * config.key_value_heads_of(layer_type) * config.head_dim_of(layer_type)
        })
        .sum();
    println!("checkpoint     {}", args.dir.display());
    println!("architecture   {:?}", config.family);
    if config.module_prefix != "model" {
        let others: Vec<String> = source
            .other_modules()
            .unwrap_or_default()
            .iter()
            .map(|(module, count)| format!("{module} ({count} tensor{})", if *count == 1 { "" } else { "s" }))
            .collect();
        println!(
            "multimodal     Ember runs the text decoder ({}.*); not loaded: {}",
            config.module_prefix,
            if others.is_empty() {
                "nothing".to_string()
            } else {
                others.join(", ")
            }
        );
    }
    println!(
        "layers         {} ({layers}: G = global attention, l = sliding window of {})",
        config.num_hidden_layers(),
        config.sliding_window.map_or("-".to_string(), |w| w.to_string())
    );
    println!(
        "attention      {} query heads, {} key/value heads, head_dim {}",
        config.num_attention_heads, config.num_key_value_heads, config.head_dim
    );
    if (config.full_head_dim, config.full_key_value_heads) != (config.head_dim, config.num_key_value_heads)
        || config.attention_k_eq_v
    {
        println!(
            "               global layers: {} key/value heads, head_dim {}{}",
            config.full_key_value_heads,
            config.full_head_dim,
            if config.attention_k_eq_v {
                ", values from the key projection"
            } else {
                ""
            }
        );
    }
    if config.num_kv_shared_layers > 0 {
        let first = config.num_hidden_layers() - config.num_kv_shared_layers;
        let sources: Vec<String> = (first..config.num_hidden_layers())
            .filter_map(|i| config.kv_source(i))
            .collect::<std::collections::BTreeSet<_>>()
            .iter()
            .map(|i| i.to_string())
            .collect();
        println!(
            "               layers {first}-{} reuse the keys and values of layer(s) {}",
            config.num_hidden_layers() - 1,
            sources.join(", ")
        );
    }
    let sizes = &config.layer_intermediate_sizes;
    let mlp = match (sizes.iter().min(), sizes.iter().max()) {
        (Some(lo), Some(hi)) if lo != hi => format!("{lo} to {hi} by layer"),
        _ => config.intermediate_size.to_string(),
    };
    println!("hidden         {} (MLP {mlp})", config.hidden_size);
    for line in extensions(config) {
        println!("{line}");
    }
    println!("vocabulary     {}", config.vocab_size);
    let partial = match config.rope_full.partial_rotary_factor {
        p if p < 1.0 => format!(", {p} of dims rotated"),
        _ => String::new(),
    };
    println!(
        "rope           theta {} (x{} linear{partial}) global, theta {} sliding",
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

/// Gemma 3n's and 4's additions to the decoder, one line each.
fn extensions(config: &GemmaConfig) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(p) = config.per_layer_inputs {
        lines.push(format!(
            "per-layer      inputs of {} per layer from a {}-row embedding",
            p.hidden_size, p.vocab_size
        ));
    }
    if let Some(a) = config.altup {
        lines.push(format!(
            "altup          {} versions of the residual stream (active {}); Laurel rank {}",
            a.num_inputs,
            a.active_idx,
            config.laurel_rank.unwrap_or(0)
        ));
    }
    let sparse: Vec<String> = (config.activation_sparsity.iter().enumerate())
        .filter(|(_, s)| **s > 0.0)
        .map(|(i, s)| format!("{i}:{s}"))
        .collect();
    if !sparse.is_empty() {
        lines.push(format!("sparsity       MLP gate top-k by layer: {}", sparse.join(" ")));
    }
    if let Some(m) = config.moe {
        lines.push(format!(
            "experts        {} (top {}, intermediate {}) beside each dense MLP",
            m.num_experts, m.top_k, m.intermediate_size
        ));
    }
    if config.norm_weight_offset() == 0.0 {
        lines.push("norms          scaled by w; values normalised too; scores unscaled".to_string());
    }
    lines
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
