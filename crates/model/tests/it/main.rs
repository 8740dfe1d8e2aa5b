//! ember-model's integration tests in one binary (each apart linked its own copy of burn's
//! generic code): parity with transformers on the CPU and WGPU, the explicit backward, GGUF
//! and bitsandbytes checkpoints, checkpoints on disk and the tokenizer.

mod bnb4;
mod checkpoints;
mod common;
mod explicit_backward;
mod generate_batch;
mod gguf;
mod gguf_export;
mod gguf_real;
mod parity;
mod tokenizer;
mod wgpu_parity;
