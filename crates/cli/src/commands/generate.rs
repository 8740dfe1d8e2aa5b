use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_data::{ChatMessage, TextStream, Tokenizer, apply_chat_template};
use ember_model::bnb::FourBitConfig;
use ember_model::{
    BatchDecodeStep, DecodeStep, FrozenWeight, GemmaForCausalLM, GenerationConfig, LoadOptions, ModelError,
    ModelSource, RowByRow, SamplingConfig, generate_with,
};
use ember_trainer::kernels::TrainKernels;
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{DeviceArgs, KernelChoice, TrainTask, run_training_on};
use crate::four_bit::FourBitArgs;
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
    #[arg(long, required_unless_present_any = ["prompt_file", "prompts_file"], conflicts_with_all = ["prompt_file", "prompts_file"])]
    pub prompt: Option<String>,
    /// Read the text to continue from this file (as is: a trailing newline is part of it).
    #[arg(long, conflicts_with = "prompts_file")]
    pub prompt_file: Option<PathBuf>,
    /// Continue many prompts, `--batch-size` at a time: a JSON Lines file, each line a JSON
    /// string or an object with a "prompt" string. Prints one JSON object per prompt, in order
    /// (as `--json` does for one), then the speed on stderr.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// With `--prompts-file`: how many prompts decode together (each step reads the weights
    /// once for all of them on Ember's CUDA kernels and CPU decoder; burn's ops step each alone).
    #[arg(long, default_value_t = 8, value_parser = ranges::at_least_one)]
    pub batch_size: usize,
    /// Print one JSON object when done instead of streaming text: the prompt, the new text,
    /// both as token ids, and the speed.
    #[arg(long)]
    pub json: bool,
    /// Ask as a user turn in the model's own chat template (its tokenizer files' or GGUF's),
    /// ending with the model's turn, as transformers' `apply_chat_template(...,
    /// add_generation_prompt=True)` renders it.
    #[arg(long)]
    pub chat: bool,
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
    /// What computes each step: cuda (Ember's kernels: the training step's layer kernels and a
    /// decoding attention over a KV cache of fixed capacity, so nothing compiles per token;
    /// burn's ops where they cannot run the model), burn, or auto (cuda on a CUDA device; on
    /// the CPU, Ember's CPU decoder: the f32 weights read in place by threaded matrix-vector
    /// products, for Gemma 1 to 3; burn's ops elsewhere).
    #[arg(long, value_enum, default_value = "auto")]
    pub kernels: KernelChoice,
    #[command(flatten)]
    pub four_bit: FourBitArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    run_training_on(&args.device.clone(), args.kernels, args)
}

impl TrainTask for Args {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType, kernels: &dyn TrainKernels<B>) -> Result<()> {
        let source = open_model(&self.model)?;
        let tokenizer = source.tokenizer()?;
        if let Some(path) = &self.prompts_file {
            return crate::commands::generate_many::run::<B>(&self, path, &source, &tokenizer, device, dtype, kernels);
        }
        let text = match (&self.prompt, &self.prompt_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("reading the prompt from {}", path.display()))?
            }
            (None, None) => bail!("give the text to continue with --prompt or --prompt-file"),
        };
        let text = match self.chat {
            true => chat_prompt(&source, &tokenizer, &text)?,
            false => text,
        };
        let model = load_model::<B>(&source, self.adapter.as_deref(), dtype, self.four_bit.config(), &device)?;
        let model = for_generation(model)?;
        let prompt = tokenizer.encode(&text)?;
        let config = self.generation_config(&tokenizer);
        let mut stream = TextStream::new(&tokenizer, &prompt);
        let mut stdout = std::io::stdout().lock();
        if !self.json {
            write!(stdout, "{text}")?;
        }
        let started = std::time::Instant::now();
        let steps = |capacity| decoder(&model, kernels, &device, capacity, prompt.len());
        // The new text as streamed: the decode of prompt + continuation, less the prompt's.
        let mut continuation = String::new();
        let tokens = generate_with(&model.config, &prompt, &config, steps, |token| {
            let piece = stream.push(token)?;
            continuation.push_str(&piece);
            if !self.json {
                // A closed stdout (e.g. `| head`) ends generation quietly.
                let _ = write!(stdout, "{piece}").and_then(|_| stdout.flush());
            }
            Ok(())
        })?;
        let rest = stream.finish()?;
        continuation.push_str(&rest);
        let seconds = started.elapsed().as_secs_f64();
        let speed = tokens.len() as f64 / seconds;
        if self.json {
            let report = serde_json::json!({
                "prompt": text,
                "prompt_ids": prompt,
                "text": continuation,
                "token_ids": tokens,
                "stopped": tokens.last().is_some_and(|t| config.stop_tokens.contains(t)),
                "seconds": seconds,
                "tokens_per_s": speed,
            });
            writeln!(stdout, "{report}")?;
            return Ok(());
        }
        let _ = write!(stdout, "{rest}");
        writeln!(stdout)?;
        eprintln!(
            "ember: {} prompt + {} new tokens in {seconds:.2} s ({speed:.1} tokens/s)",
            prompt.len(),
            tokens.len(),
        );
        Ok(())
    }
}

impl Args {
    /// What to generate: the length and sampling asked for, ending at the tokenizer's stop tokens.
    pub fn generation_config(&self, tokenizer: &Tokenizer) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            stop_tokens: tokenizer.stop_tokens().to_vec(),
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
        }
    }
}

/// `text` as the user's turn in the model's chat template, with the prompt for the model's turn.
pub fn chat_prompt(source: &ModelSource, tokenizer: &Tokenizer, text: &str) -> Result<String> {
    let template = source.chat_template()?.with_context(|| {
        format!(
            "{} has no chat template (tokenizer_config.json's chat_template, chat_template.jinja or \
             the GGUF's tokenizer.chat_template): leave out --chat, or use the instruction-tuned \
             model's tokenizer files",
            source.path().display()
        )
    })?;
    let piece = |id: u32| tokenizer.inner().id_to_token(id).unwrap_or_default();
    let (bos, eos) = (piece(tokenizer.bos_id()), piece(tokenizer.eos_id()));
    let user = [ChatMessage::new("user", text)];
    Ok(apply_chat_template(&template, &user, &bos, &eos, true)?)
}

/// One generation's steps on `kernels` where they decode (Ember's CUDA kernels or CPU
/// decoder), else in burn's ops: a KV cache of `capacity` positions, steps of up to `max_step` tokens.
pub fn decoder<'a, B: Backend>(
    model: &'a GemmaForCausalLM<B>,
    kernels: &'a dyn TrainKernels<B>,
    device: &'a B::Device,
    capacity: usize,
    max_step: usize,
) -> ember_model::Result<Box<dyn DecodeStep + 'a>> {
    match kernels.decoder(model, capacity, max_step) {
        Some(decoder) => decoder.map_err(|e| ModelError::Generation(e.to_string())),
        None => Ok(Box::new(model.decoder(capacity, device))),
    }
}

/// A batched generation's steps on `kernels` where they decode batches (Ember's CUDA kernels),
/// else [`decoder`]s stepping a row at a time: `rows` sequences, KV caches of `capacity`
/// positions, prompts of up to `max_prompt` tokens.
pub fn batch_decoder<'a, B: Backend>(
    model: &'a GemmaForCausalLM<B>,
    kernels: &'a dyn TrainKernels<B>,
    device: &'a B::Device,
    rows: usize,
    capacity: usize,
    max_prompt: usize,
) -> ember_model::Result<Box<dyn BatchDecodeStep + 'a>> {
    match kernels.batch_decoder(model, rows, capacity, max_prompt) {
        Some(decoder) => decoder.map_err(|e| ModelError::Generation(e.to_string())),
        None => {
            let rows = (0..rows)
                .map(|_| decoder(model, kernels, device, capacity, max_prompt))
                .collect::<ember_model::Result<Vec<_>>>()?;
            Ok(Box::new(RowByRow(rows)))
        }
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
    four_bit: Option<FourBitConfig>,
    device: &B::Device,
) -> Result<GemmaForCausalLM<B>> {
    let model = source
        .load::<B>(&load_options(dtype, four_bit), device)
        .with_context(|| format!("loading the model from {}", source.path().display()))?;
    match adapter {
        Some(adapter) => Ok(ember_lora::load_adapter(model, adapter)
            .with_context(|| format!("loading the adapter from {}", adapter.display()))?
            .0),
        None => Ok(model),
    }
}

/// The model to generate with: adapters on dense weights are folded into them, as PEFT's
/// `merge_and_unload` does, so each decoding step reads one weight per projection instead of
/// running the adapter's two extra products (at Gemma-2B's shape a third of a token's time on
/// the H200). Adapters on 4-bit weights stay: merged, those weights would be dense.
pub fn for_generation<B: Backend>(model: GemmaForCausalLM<B>) -> Result<GemmaForCausalLM<B>> {
    let linears =
        || (model.model.layers.iter().enumerate()).flat_map(|(i, layer)| ember_lora::projections(i, layer).into_iter());
    let adapted = linears().any(|(_, linear)| linear.lora.is_some());
    let four_bit = linears().any(|(_, linear)| matches!(linear.weight, FrozenWeight::FourBit(_)));
    if !adapted || four_bit {
        return Ok(model);
    }
    Ok(ember_lora::merge_lora(model)?)
}

/// Loading shows a progress bar for checkpoints large enough to wait for.
pub fn load_options(dtype: DType, four_bit: Option<FourBitConfig>) -> LoadOptions {
    let mut options = LoadOptions::new(dtype);
    options.four_bit = four_bit;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({eta})")
            .expect("a valid progress template"),
    );
    options.progress = bar;
    options
}
