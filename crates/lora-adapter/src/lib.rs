//! LoRA adapters for Ember's Gemma models, interchangeable with Hugging Face PEFT.
//!
//! The adapter math lives on each projection of the model ([`ember_model::Lora`]): two thin
//! f32 matmuls beside the frozen base. This crate decides which projections get one and with
//! what rank and scale (PEFT's rules), initialises them as PEFT does, reads and writes PEFT's
//! adapter format, and merges adapters into a plain checkpoint.

mod apply;
mod atomic;
mod config;
mod error;
mod gguf;
mod merge;
mod peft;
mod targets;

pub use apply::{
    adapter_parameter_count, adapter_paths, adapters, adapters_mut, add_lora, projections, projections_mut,
};
pub use atomic::{clean_stale_writes, write_dir_atomically, write_file_atomically};
pub use config::{Init, LoraConfig, PROJECTIONS, Targets};
pub use ember_model::MAX_SHARD_BYTES;
pub use error::{LoraError, Result};
pub use gguf::export_gguf_lora;
pub use merge::{export_checkpoint, merge_lora};
pub use peft::{
    AdapterTensors, CONFIG_FILE, WEIGHTS_FILE, adapter_tensors, load_adapter, load_adapter_as, peft_key, save_adapter,
    write_adapter_files,
};
pub use targets::{Resolver, Target};
