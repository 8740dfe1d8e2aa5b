use std::path::PathBuf;

use crate::commands::generate::{load_options, open_model};
use crate::device::{DeviceArgs, DtypeArg, Task, dtype_name, run_on};
use crate::four_bit::FourBitArgs;
use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use ember_data::{Modelfile, ollama_template};
use ember_lora::{
    MAX_SHARD_BYTES, export_checkpoint, export_gguf_lora, load_adapter, merge_lora, save_adapter, write_dir_atomically,
};
use ember_model::ModelSource;
use ember_model::gguf::{GgufFileType, export_gguf};

/// The file a GGUF export writes inside `--out`.
const GGUF_FILE: &str = "model.gguf";
/// The file a GGUF LoRA export writes inside `--out`.
const GGUF_LORA_FILE: &str = "adapter.gguf";
/// Ollama's model description, beside either GGUF file.
const MODELFILE: &str = "Modelfile";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model the adapter was trained on: a checkpoint directory or a GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter directory (PEFT format); optional with --format gguf (the base alone).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where to write: a PEFT adapter directory, with --merge a full checkpoint, with
    /// --format gguf a directory holding model.gguf, with gguf-lora one holding adapter.gguf;
    /// both GGUF formats add an Ollama Modelfile.
    #[arg(long)]
    pub out: PathBuf,
    /// Fold the adapter into the base weights and write a plain Hugging Face checkpoint.
    #[arg(long)]
    pub merge: bool,
    /// `peft` (the adapter, or with --merge a safetensors checkpoint), `gguf` (the merged
    /// model as a GGUF file for llama.cpp and Ollama) or `gguf-lora` (the adapter alone, for
    /// llama.cpp's --lora on the base model's GGUF).
    #[arg(long, value_enum, default_value_t = Format::Peft)]
    pub format: Format,
    /// The GGUF file's matrix type (llama.cpp's --outtype); norms stay f32.
    #[arg(long, value_enum, default_value_t = OutType::F16)]
    pub outtype: OutType,
    /// The adapter was trained on a 4-bit base: merge into that base's dequantized weights
    /// (computed in --dtype, the training's), not into the original ones.
    #[command(flatten)]
    pub four_bit: FourBitArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Peft,
    Gguf,
    GgufLora,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    /// llama.cpp's Q4_K_M mix (Q4_K, Q6_K where llama.cpp gives more bits; Q5_0/Q8_0 for
    /// rows that are no whole number of 256-value blocks).
    #[value(name = "q4_k_m")]
    Q4KM,
}

impl OutType {
    fn file_type(self) -> GgufFileType {
        match self {
            Self::F32 => GgufFileType::F32,
            Self::F16 => GgufFileType::F16,
            Self::Bf16 => GgufFileType::BF16,
            Self::Q8_0 => GgufFileType::Q8_0,
            Self::Q4KM => GgufFileType::Q4_K_M,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.format != Format::Gguf && args.adapter.is_none() {
        bail!("--adapter is required unless --format gguf exports the base model alone");
    }
    let mut device = args.device.clone();
    // The merge is computed in f32 whatever the export dtype; --dtype picks the latter. A 4-bit
    // base is dequantized in that dtype, as training in it did, and the merge rounds to it.
    let export_dtype = match device.dtype {
        DtypeArg::Fixed(d) => d,
        DtypeArg::Auto => DType::BF16,
    };
    if !args.four_bit.load_in_4bit {
        device.dtype = DtypeArg::Fixed(DType::F32);
    }
    run_on(&device, Export { args, export_dtype })
}

struct Export {
    args: Args,
    export_dtype: DType,
}

impl Task for Export {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<()> {
        let Args {
            model,
            adapter,
            out,
            merge,
            format,
            outtype,
            four_bit,
            ..
        } = self.args;
        let source = open_model(&model)?;
        let base = source
            .load::<B>(&load_options(dtype, four_bit.config()), &device)
            .with_context(|| format!("loading the model from {}", model.display()))?;
        let Some(adapter) = adapter else {
            return write_gguf(&base, &source, &out, outtype);
        };
        let (with_adapter, config) =
            load_adapter(base, &adapter).with_context(|| format!("loading the adapter from {}", adapter.display()))?;
        match (format, merge) {
            (Format::Gguf, _) => write_gguf(&merge_lora(with_adapter)?, &source, &out, outtype),
            (Format::GgufLora, _) => {
                let file = out.join(GGUF_LORA_FILE);
                // Ollama runs the adapter over the base's GGUF: the --model file itself.
                let base = std::fs::canonicalize(&model).unwrap_or(model.clone());
                let modelfile = modelfile(&source, base.display().to_string(), Some(GGUF_LORA_FILE))?;
                write_dir_atomically(out.as_path(), |tmp| {
                    export_gguf_lora(&with_adapter, source.path(), &tmp.join(GGUF_LORA_FILE))
                        .with_context(|| format!("writing {}", file.display()))?;
                    std::fs::write(tmp.join(MODELFILE), &modelfile).context("writing the Modelfile")
                })?;
                eprintln!("ember: LoRA GGUF and an Ollama Modelfile written to {}", out.display());
                Ok(())
            }
            (Format::Peft, true) => {
                let merged = merge_lora(with_adapter)?;
                export_checkpoint(&merged, &source, &out, self.export_dtype, MAX_SHARD_BYTES)
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!(
                    "ember: merged checkpoint ({}) written to {}",
                    dtype_name(self.export_dtype),
                    out.display()
                );
                Ok(())
            }
            (Format::Peft, false) => {
                save_adapter(&with_adapter, &config, &out).with_context(|| format!("writing {}", out.display()))?;
                eprintln!("ember: adapter written to {}", out.display());
                Ok(())
            }
        }
    }
}

/// `model` as `out/model.gguf`; the directory appears whole or not at all.
fn write_gguf<B: Backend>(
    model: &ember_model::GemmaForCausalLM<B>,
    source: &ModelSource,
    out: &std::path::Path,
    outtype: OutType,
) -> Result<()> {
    let modelfile = modelfile(source, format!("./{GGUF_FILE}"), None)?;
    write_dir_atomically(out, |tmp| {
        export_gguf(model, source, &tmp.join(GGUF_FILE), outtype.file_type())
            .with_context(|| format!("writing {}", out.join(GGUF_FILE).display()))?;
        std::fs::write(tmp.join(MODELFILE), &modelfile).context("writing the Modelfile")
    })?;
    let name = outtype
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    eprintln!(
        "ember: GGUF ({name}) written to {}, with an Ollama Modelfile beside it",
        out.join(GGUF_FILE).display()
    );
    Ok(())
}

/// The Ollama Modelfile of an export: `FROM` and `ADAPTER` as given, the model's chat template
/// as Ollama's TEMPLATE (none where the model has no template, or one Ember cannot state in
/// Go's template language: said on stderr) and a stop parameter for each stop token.
fn modelfile(source: &ModelSource, from: String, adapter: Option<&str>) -> Result<String> {
    let tokenizer = source.tokenizer()?;
    let piece = |id: u32| tokenizer.inner().id_to_token(id).unwrap_or_default();
    let template = match source.chat_template()? {
        None => {
            eprintln!("ember: the model has no chat template: the Modelfile has no TEMPLATE (raw prompts)");
            None
        }
        Some(jinja) => match ollama_template(&jinja, &piece(tokenizer.bos_id()), &piece(tokenizer.eos_id())) {
            Ok((template, _)) => Some(template),
            Err(e) => {
                eprintln!("ember: the Modelfile has no TEMPLATE: {e}");
                None
            }
        },
    };
    let file = Modelfile {
        from,
        adapter: adapter.map(|a| format!("./{a}")),
        template,
        stops: tokenizer.stop_tokens().iter().map(|&id| piece(id)).collect(),
    };
    Ok(file.render()?)
}
