//! Step 2 of the seed recipe: put LoRA adapters on the model, with the seed's settings.
//!
//!     cargo run --example lora
//!     cargo run --example lora -- --model ~/models/gemma-2b-it

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::NdArray;
use burn::module::Module;
use burn::tensor::DType;
use clap::Parser;
use ember_lora::{Init, LoraConfig, PROJECTIONS, Targets, adapter_parameter_count, add_lora, projections};
use ember_model::{GemmaForCausalLM, LoadOptions};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory. Default: the tiny random-weight Gemma 3 that ships with Ember.
    #[arg(long, default_value = "fixtures/models/gemma3")]
    model: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let model = GemmaForCausalLM::<NdArray>::load(&args.model, &LoadOptions::new(DType::F32), &Default::default())?;

    // The seed's LoraConfig, field by field (it is also `LoraConfig::seed_recipe()`; PEFT's
    // defaults, `LoraConfig::default()`, are r = 8, alpha = 8 on q_proj and v_proj).
    let lora = LoraConfig {
        r: 16,
        lora_alpha: 16.0,
        lora_dropout: 0.0,
        // q, k, v, o of attention and gate, up, down of the MLP, in every layer.
        target_modules: Targets::Names(PROJECTIONS.iter().map(|p| p.to_string()).collect()),
        use_rslora: false,
        // PEFT's default: A random, B zero, so the adapted model starts as the base model.
        init_lora_weights: Init::Default,
        ..LoraConfig::seed_recipe()
    };
    // The seed draws the initial A matrices from it.
    let model = add_lora(model, &lora, 1357)?;

    // The base stays frozen: only the adapters train.
    let trainable = adapter_parameter_count(&model);
    let all = model.num_params();
    println!(
        "trainable params: {trainable} || all params: {all} || trainable%: {:.4}",
        100.0 * trainable as f64 / all as f64
    );
    println!("layer 0:");
    for (path, linear) in projections(0, &model.model.layers[0]) {
        if let Some(adapter) = &linear.lora {
            println!(
                "  {path}: weight {:?}, A {:?}, B {:?}, scale alpha/r = {}",
                linear.shape(),
                adapter.a.dims(),
                adapter.b.dims(),
                adapter.scale
            );
        }
    }
    Ok(())
}
