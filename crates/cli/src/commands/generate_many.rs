//! `ember generate --prompts-file`: many prompts continued `--batch-size` at a time, one JSON
//! object per prompt on stdout in the prompts' order.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_data::{TextStream, Tokenizer};
use ember_model::{ModelSource, generate_batch_with};
use ember_trainer::kernels::TrainKernels;
use serde_json::{Value, json};

use crate::commands::generate::{Args, batch_decoder, chat_prompt, for_generation, load_model};

pub fn run<B: Backend>(
    args: &Args,
    path: &Path,
    source: &ModelSource,
    tokenizer: &Tokenizer,
    device: B::Device,
    dtype: DType,
    kernels: &dyn TrainKernels<B>,
) -> Result<()> {
    let lines = read_prompts(path)?;
    let context = source.config().max_position_embeddings;
    let (mut texts, mut prompts) = (Vec::new(), Vec::new());
    for (line, text) in lines {
        let text = match args.chat {
            true => chat_prompt(source, tokenizer, &text)?,
            false => text,
        };
        let ids = tokenizer.encode(&text)?;
        if ids.len() >= context {
            bail!(
                "{}:{line}: the prompt has {} tokens, but the model's context (max_position_embeddings) is \
                 {context}: shorten it",
                path.display(),
                ids.len()
            );
        }
        texts.push(text);
        prompts.push(ids);
    }
    let model = load_model::<B>(source, args.adapter.as_deref(), dtype, args.four_bit.config(), &device)?;
    let model = for_generation(model)?;
    let config = args.generation_config(tokenizer);
    let started = Instant::now();
    let mut new_tokens = 0;
    let mut stdout = std::io::stdout().lock();
    for (texts, prompts) in texts.chunks(args.batch_size).zip(prompts.chunks(args.batch_size)) {
        let max_prompt = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let start = |rows, capacity| batch_decoder(&model, kernels, &device, rows, capacity, max_prompt);
        let outputs = generate_batch_with(&model.config, prompts, &config, start, |_, _| Ok(()))?;
        for ((text, prompt), tokens) in texts.iter().zip(prompts).zip(outputs) {
            new_tokens += tokens.len();
            let report = json!({
                "prompt": text,
                "prompt_ids": prompt,
                "text": continuation(tokenizer, prompt, &tokens)?,
                "token_ids": tokens,
                "stopped": tokens.last().is_some_and(|t| config.stop_tokens.contains(t)),
            });
            writeln!(stdout, "{report}")?;
        }
        stdout.flush()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "ember: {} prompts, {new_tokens} new tokens in {seconds:.2} s ({:.1} tokens/s, {} at a time)",
        prompts.len(),
        new_tokens as f64 / seconds,
        args.batch_size.min(prompts.len()),
    );
    Ok(())
}

/// The prompts of a JSON Lines file, with their line numbers: each non-blank line a JSON string
/// or an object with a "prompt" string.
pub fn read_prompts(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the prompts from {}", path.display()))?;
    let mut prompts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let value: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "{} is not JSON: each line of a prompts file is a JSON string or an object with a \"prompt\" string",
                at()
            )
        })?;
        let prompt = match &value {
            Value::String(text) => text.clone(),
            Value::Object(fields) => match fields.get("prompt") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => bail!("{}: \"prompt\" is {other}, not a string", at()),
                None => bail!(
                    "{}: the object has no \"prompt\" string (its keys: {:?})",
                    at(),
                    fields.keys().collect::<Vec<_>>()
                ),
            },
            other => bail!(
                "{}: {other} is neither a string nor an object with a \"prompt\" string",
                at()
            ),
        };
        if prompt.is_empty() {
            bail!("{}: the prompt is empty", at());
        }
        prompts.push((index + 1, prompt));
    }
    if prompts.is_empty() {
        bail!(
            "{} has no prompts: write one JSON string or {{\"prompt\": ...}} object per line",
            path.display()
        );
    }
    Ok(prompts)
}

/// The text of `tokens` after `prompt`, as the streamed single-prompt output writes it.
fn continuation(tokenizer: &Tokenizer, prompt: &[u32], tokens: &[u32]) -> Result<String> {
    let mut stream = TextStream::new(tokenizer, prompt);
    let mut text = String::new();
    for &token in tokens {
        text.push_str(&stream.push(token)?);
    }
    text.push_str(&stream.finish()?);
    Ok(text)
}
