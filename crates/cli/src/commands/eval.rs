use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_data::DataConfig;
use ember_trainer::eval::evaluate;
use ember_trainer::trainer::load_tokenizer;

use crate::commands::generate::load_model;
use crate::device::{DeviceArgs, Task, run_on};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory or a GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to evaluate with.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Dataset (JSONL, JSON, Parquet, CSV; instruction/input/output columns, the seed's
    /// template, loss on every token, as training with the defaults).
    #[arg(long)]
    pub data: String,
    #[arg(long, default_value_t = 2048)]
    pub max_seq_length: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Pad each batch to a multiple of this many tokens: on GPUs every new shape compiles kernels.
    #[arg(long, default_value_t = 64)]
    pub pad_to_multiple_of: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    run_on(&args.device.clone(), args)
}

impl Task for Args {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<()> {
        let tokenizer = load_tokenizer(&self.model)?;
        let mut data = DataConfig::new(self.data.clone());
        data.max_seq_length = self.max_seq_length;
        let dataset = ember_data::load(&data, &tokenizer)?.train;
        let model = load_model::<B>(&self.model, self.adapter.as_deref(), dtype, &device)?;
        let result = evaluate(
            &model,
            &dataset,
            self.batch_size,
            tokenizer.pad_id(),
            self.pad_to_multiple_of,
        );
        if self.json {
            println!(
                "{}",
                serde_json::json!({"loss": result.loss, "perplexity": result.perplexity, "tokens": result.tokens, "samples": dataset.len()})
            );
        } else {
            println!(
                "loss {:.4}  perplexity {:.2}  ({} trained tokens in {} samples)",
                result.loss,
                result.perplexity,
                result.tokens,
                dataset.len()
            );
        }
        Ok(())
    }
}
