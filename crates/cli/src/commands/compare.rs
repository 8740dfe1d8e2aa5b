//! `ember compare`: a model's logits against the ones transformers computed for the same batch,
//! to check a checkpoint (or a backend, or a dtype) before trusting it. The reference is written
//! in Python, e.g.:
//!
//! ```python
//! batch = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
//! logits = model(**batch).logits.float()
//! safetensors.torch.save_file({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
//!                              "logits": logits.contiguous()}, "reference.safetensors")
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ember_model::LogitsReference;

use super::generate::{load_model, open_model};
use crate::device::{DeviceArgs, Task, dtype_name, run_on};
use crate::ranges;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to run the model with.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// safetensors with `input_ids`, `attention_mask` (I64) and `logits` (F32) from transformers.
    #[arg(long)]
    pub reference: PathBuf,
    /// Largest |Δlogit| accepted; the command fails above it.
    #[arg(long, default_value_t = 1e-3, value_parser = ranges::non_negative::<f32>)]
    pub tolerance: f32,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    run_on(&args.device.clone(), args)
}

impl Task for Args {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<()> {
        let reference = LogitsReference::read(&self.reference)?;
        let model = load_model::<B>(&open_model(&self.model)?, self.adapter.as_deref(), dtype, &device)?;
        let found = reference
            .compare(&model, &device)
            .with_context(|| format!("comparing with {}", self.reference.display()))?;
        let cached = found
            .cached_max_abs_diff
            .map_or("no row without padding".into(), |d| format!("{d:.3e}"));
        println!(
            "{}: max |Δlogit| {:.3e} over {} positions, through the KV cache {cached}; \
             same top token at {}/{} ({})",
            self.model.display(),
            found.max_abs_diff,
            found.positions,
            found.same_argmax,
            found.positions,
            dtype_name(dtype),
        );
        let worst = found.worst();
        // Written so that NaN fails: no comparison with NaN is true.
        if !(worst <= self.tolerance) {
            bail!(
                "the logits differ by {worst:.3e}, more than --tolerance {:e}",
                self.tolerance
            );
        }
        if !found.all_argmax_agree() {
            bail!(
                "the top token differs from the reference's at {} of {} positions",
                found.positions - found.same_argmax,
                found.positions
            );
        }
        Ok(())
    }
}
