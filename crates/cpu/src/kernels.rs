use burn::backend::NdArray;
use ember_model::{BatchDecodeStep, DecodeStep, GemmaForCausalLM};
use ember_trainer::Result;
use ember_trainer::grads::MicroBatch;
use ember_trainer::kernels::{BatchKernels, BurnKernels, Favour, TrainKernels};

use crate::decode::CpuDecoder;

/// The CPU's kernels: a training step's and an evaluation's arithmetic in burn's ops (its
/// matrix products already read few-row projections' weights in place, and many-row ones
/// copy each weight once per product, a small share of it), and generation on
/// [`CpuDecoder`] where it runs the model, else burn's ops.
pub struct CpuKernels;

impl TrainKernels<NdArray> for CpuKernels {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn unsupported(&self, model: &GemmaForCausalLM<NdArray>) -> Option<String> {
        TrainKernels::<NdArray>::unsupported(&BurnKernels, model)
    }

    fn decoder<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<NdArray>,
        capacity: usize,
        _max_step: usize,
    ) -> Option<Result<Box<dyn DecodeStep + 'a>>> {
        Some(cpu_decoder(model, 1, capacity)?.map(|d| Box::new(d) as Box<dyn DecodeStep + 'a>))
    }

    fn batch_decoder<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<NdArray>,
        rows: usize,
        capacity: usize,
        _max_prompt: usize,
    ) -> Option<Result<Box<dyn BatchDecodeStep + 'a>>> {
        Some(cpu_decoder(model, rows, capacity)?.map(|d| Box::new(d) as Box<dyn BatchDecodeStep + 'a>))
    }

    fn prepare<'a>(
        &'a self,
        model: &'a GemmaForCausalLM<NdArray>,
        batch: &MicroBatch,
        favour: Favour,
    ) -> Result<Box<dyn BatchKernels<NdArray> + 'a>> {
        BurnKernels.prepare(model, batch, favour)
    }
}

/// [`CpuDecoder`] of `rows` sequences, where it runs the model (`None` leaves generation to
/// burn's ops, with a warning saying why).
fn cpu_decoder(model: &GemmaForCausalLM<NdArray>, rows: usize, capacity: usize) -> Option<Result<CpuDecoder>> {
    if let Some(why) = CpuDecoder::unsupported(model) {
        tracing::warn!("Ember's CPU decoder cannot run this model ({why}); generating with burn's ops");
        return None;
    }
    Some(CpuDecoder::new(model, rows, capacity).map_err(Into::into))
}
