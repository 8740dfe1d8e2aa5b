//! Ember's CUDA fast path for LoRA training.
//!
//! The generic path (burn ops, `ember_trainer::kernels::BurnKernels`) is the reference; this
//! crate computes the same functions — a decoder layer's forward, its backward for frozen base
//! weights, and the LM head's loss with its gradient — with cuBLASLt GEMMs and Ember's own CUDA
//! kernels (`src/kernels/*.cu`: RMSNorm, RoPE, GeGLU, cross-entropy, FlashAttention-2-style
//! attention), compiled with NVRTC at run time. It trains on [`CudaBackend`] (burn's CUDA
//! backend without fusion) and is chosen at run time by the CLI; CUDA, cuBLASLt and NVRTC are
//! loaded dynamically, so the crate builds everywhere.

mod adapters;
mod batch;
mod bridge;
mod decode;
mod driver;
mod engine;
mod error;
mod gemm;
mod graph;
mod head;
mod layer;
mod module;
mod nccl;
mod offload;
mod ops;
mod optimizer;
mod profile;
mod scratch;

pub use bridge::{CudaBackend, reserved_seen};
pub use engine::CudaKernels;
pub use error::{CudaError, Result};
pub use nccl::NcclGroup;
