use std::path::PathBuf;

use crate::commands::generate::{load_options, open_model};
use crate::device::{DeviceArgs, DtypeArg, Task, dtype_name, run_on};
use anyhow::{Context, Result};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_lora::{MAX_SHARD_BYTES, export_checkpoint, load_adapter, merge_lora, save_adapter};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model the adapter was trained on: a checkpoint directory or a GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter directory (PEFT format).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write: a PEFT adapter directory, or with --merge a full checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Fold the adapter into the base weights and write a plain Hugging Face checkpoint.
    #[arg(long)]
    pub merge: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let mut device = args.device.clone();
    // The merge is computed in f32 whatever the export dtype; --dtype picks the latter.
    let export_dtype = match device.dtype {
        DtypeArg::Fixed(d) => d,
        DtypeArg::Auto => DType::BF16,
    };
    device.dtype = DtypeArg::Fixed(DType::F32);
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
            ..
        } = self.args;
        let source = open_model(&model)?;
        let base = source
            .load::<B>(&load_options(dtype), &device)
            .with_context(|| format!("loading the model from {}", model.display()))?;
        let (with_adapter, config) =
            load_adapter(base, &adapter).with_context(|| format!("loading the adapter from {}", adapter.display()))?;
        if merge {
            let merged = merge_lora(with_adapter)?;
            export_checkpoint(&merged, &source, &out, self.export_dtype, MAX_SHARD_BYTES)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "ember: merged checkpoint ({}) written to {}",
                dtype_name(self.export_dtype),
                out.display()
            );
        } else {
            save_adapter(&with_adapter, &config, &out).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("ember: adapter written to {}", out.display());
        }
        Ok(())
    }
}
