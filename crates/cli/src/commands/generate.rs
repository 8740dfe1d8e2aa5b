use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_data::TextStream;
use ember_model::{GemmaForCausalLM, GenerationConfig, LoadOptions, ModelSource, SamplingConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{DeviceArgs, Task, run_on};
use crate::ranges;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json) or a GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to run the model with.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Text to continue; `<bos>` is added once.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 256, value_parser = ranges::at_least_one)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0, value_parser = ranges::non_negative::<f32>)]
    pub temperature: f32,
    #[arg(long, value_parser = ranges::at_least_one)]
    pub top_k: Option<usize>,
    #[arg(long, value_parser = ranges::mass)]
    pub top_p: Option<f32>,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    run_on(&args.device.clone(), args)
}

impl Task for Args {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<()> {
        let source = open_model(&self.model)?;
        let tokenizer = source.tokenizer()?;
        let model = load_model::<B>(&source, self.adapter.as_deref(), dtype, &device)?;
        let prompt = tokenizer.encode(&self.prompt)?;
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            stop_tokens: tokenizer.stop_tokens().to_vec(),
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
        };
        let mut stream = TextStream::new(&tokenizer, &prompt);
        let mut stdout = std::io::stdout().lock();
        write!(stdout, "{}", self.prompt)?;
        let started = std::time::Instant::now();
        let tokens = model.generate(&prompt, &config, &device, |token| {
            let text = stream.push(token)?;
            // A closed stdout (e.g. `| head`) ends generation quietly.
            let _ = write!(stdout, "{text}").and_then(|_| stdout.flush());
            Ok(())
        })?;
        let _ = write!(stdout, "{}", stream.finish()?);
        writeln!(stdout)?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "ember: {} prompt + {} new tokens in {seconds:.2} s ({:.1} tokens/s)",
            prompt.len(),
            tokens.len(),
            tokens.len() as f64 / seconds
        );
        Ok(())
    }
}

/// A checkpoint directory or GGUF file, opened.
pub fn open_model(path: &Path) -> Result<ModelSource> {
    ModelSource::open(path).with_context(|| format!("opening the model {}", path.display()))
}

/// The model of `source`, with the PEFT adapter in `adapter` applied if given.
pub fn load_model<B: Backend>(
    source: &ModelSource,
    adapter: Option<&Path>,
    dtype: DType,
    device: &B::Device,
) -> Result<GemmaForCausalLM<B>> {
    let model = source
        .load::<B>(&load_options(dtype), device)
        .with_context(|| format!("loading the model from {}", source.path().display()))?;
    match adapter {
        Some(adapter) => Ok(ember_lora::load_adapter(model, adapter)
            .with_context(|| format!("loading the adapter from {}", adapter.display()))?
            .0),
        None => Ok(model),
    }
}

/// Loading shows a progress bar for checkpoints large enough to wait for.
pub fn load_options(dtype: DType) -> LoadOptions {
    let mut options = LoadOptions::new(dtype);
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({eta})")
            .expect("a valid progress template"),
    );
    options.progress = bar;
    options
}
