//! `ember convert`: a GGUF model (llama.cpp's format) as a Hugging Face checkpoint directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::DType;
use ember_lora::write_dir_atomically;
use ember_model::gguf::{self, ConvertOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::dtype_name;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file of a Gemma, Gemma 2 or Gemma 3 model.
    #[arg(long)]
    pub gguf: PathBuf,
    /// The checkpoint directory to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Dtype of the written weights: bf16 (as Google releases Gemma), f32 (the dequantized
    /// values exactly) or f16.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: DType,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(format!("unknown dtype `{s}`; expected bf16, f32 or f16")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut options = ConvertOptions::new(args.dtype);
    options.progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("converting {bar:40} {bytes}/{total_bytes} ({eta})")
            .expect("a valid progress template"),
    );
    // Written into a temporary sibling and renamed, so an interrupted run leaves no half checkpoint.
    write_dir_atomically(&args.out, |tmp| -> Result<()> {
        gguf::convert(&args.gguf, tmp, &options)?;
        Ok(())
    })
    .with_context(|| format!("converting {} into {}", args.gguf.display(), args.out.display()))?;
    eprintln!(
        "ember: {} written to {} as a Hugging Face checkpoint ({})",
        args.gguf.display(),
        args.out.display(),
        dtype_name(args.dtype)
    );
    Ok(())
}
