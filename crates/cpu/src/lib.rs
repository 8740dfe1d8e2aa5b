//! Ember's CPU fast path: generation on burn's ndarray backend in f32.
//!
//! burn's ops (`ember_model::GemmaForCausalLM::decoder`) are the reference and stay
//! selectable (`--kernels burn`); this crate computes the same steps for Gemma 1, 2 and 3 —
//! embedding, RMSNorms, RoPE, attention over a KV cache with GQA, soft-capping and sliding
//! windows, GeGLU, LoRA adapters, the LM head — with each weight read in place from burn's
//! storage by threaded matrix-vector products, where burn's ops rearrange tensors and
//! allocate at every step. [`CpuKernels`] brings it to the CLI through
//! `ember_trainer::kernels::TrainKernels::decoder`, as `ember-cuda` brings its decoder.

mod activation;
mod attention;
mod cache;
mod decode;
mod error;
mod kernels;
mod layer;
mod matvec;
mod norm;
mod projection;
mod rotary;
mod values;

pub use decode::CpuDecoder;
pub use error::{CpuError, Result};
pub use kernels::CpuKernels;
