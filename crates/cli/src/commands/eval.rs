use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_data::DataConfig;
use ember_trainer::config::RunConfig;
use ember_trainer::eval::evaluate;
use ember_trainer::kernels::TrainKernels;

use crate::commands::generate::{load_model, open_model};
use crate::device::{DeviceArgs, KernelChoice, TrainTask, run_training_on};
use crate::four_bit::FourBitArgs;
use crate::ranges;
use ember_model::bnb::FourBitConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory or a GGUF file (default with --config: the run's model).
    #[arg(long, required_unless_present = "config")]
    pub model: Option<PathBuf>,
    /// A LoRA adapter directory (PEFT format) to evaluate with.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A run config: its [data] settings (columns, template, train_on, max_seq_length) format
    /// the samples as training did. Evaluates its eval split, or the whole of --data if given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset (JSONL, JSON, Parquet, CSV). Without --config: instruction/input/output columns,
    /// the seed's template, loss on every token (training's defaults).
    #[arg(long, required_unless_present = "config")]
    pub data: Option<String>,
    /// Without --config only (a run config has its own).
    #[arg(long, conflicts_with = "config", default_value_t = 2048)]
    pub max_seq_length: usize,
    #[arg(long, default_value_t = 8, value_parser = ranges::at_least_one)]
    pub batch_size: usize,
    /// Pad each batch to a multiple of this many tokens: on GPUs every new shape compiles kernels.
    #[arg(long, default_value_t = 64, value_parser = ranges::at_least_one)]
    pub pad_to_multiple_of: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// What computes the layers and the loss: auto (Ember's CUDA kernels on CUDA, burn's
    /// elsewhere), cuda or burn.
    #[arg(long, value_enum, default_value = "auto")]
    pub kernels: KernelChoice,
    /// Without --config only (a run config's [model] says how to load).
    #[command(flatten)]
    pub four_bit: FourBitArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    run_training_on(&args.device.clone(), args.kernels, args)
}

impl Args {
    /// The model path and the data settings to evaluate with, whether to take the eval split,
    /// and how to load in 4 bits (the flags', else the run config's) in `dtype`.
    fn settings(&self, dtype: DType) -> Result<(PathBuf, DataConfig, bool, Option<FourBitConfig>)> {
        let Some(path) = &self.config else {
            let mut data = DataConfig::new(self.data.clone().expect("clap requires --data without --config"));
            data.max_seq_length = self.max_seq_length;
            return Ok((
                self.model.clone().expect("clap requires --model without --config"),
                data,
                false,
                self.four_bit.config(),
            ));
        };
        let run = RunConfig::from_file(path)?;
        let four_bit = match self.four_bit.config() {
            Some(flags) => Some(flags),
            None => run.model.four_bit(Some(dtype), path)?,
        };
        let model = self.model.clone().unwrap_or(run.model.path);
        let mut data = run.data;
        let eval_split = match &self.data {
            Some(file) => {
                data.path = file.clone();
                data.eval = None;
                false
            }
            None if data.eval.is_some() => true,
            None => bail!(
                "{} has no eval split ([data] eval); pass the data to evaluate with --data",
                path.display()
            ),
        };
        Ok((model, data, eval_split, four_bit))
    }
}

impl TrainTask for Args {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<()> {
        let (model_path, data, eval_split, four_bit) = self.settings(dtype)?;
        let source = open_model(&model_path)?;
        let tokenizer = source.tokenizer()?;
        let splits = ember_data::load(&data, &tokenizer)?;
        let dataset = match eval_split {
            true => splits.eval.context("the run config's eval split is empty")?,
            false => splits.train,
        };
        let model = load_model::<B>(&source, self.adapter.as_deref(), dtype, four_bit, &device)?;
        let result = evaluate(
            &model,
            kernels,
            &dataset,
            self.batch_size,
            tokenizer.pad_id(),
            self.pad_to_multiple_of,
        )?;
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
