//! Gemma, Gemma 2, 3, 3n and 4 text models on burn, loaded from Hugging Face checkpoints.
//!
//! The model computes what transformers computes: parameters keep their Hugging Face names
//! (`model.layers.0.self_attn.q_proj.weight`) and layout (`[out, in]`), and every numeric
//! detail (norms in f32 with `1 + w`, scaled embeddings, tanh GELU, `rotate_half` RoPE,
//! soft-capping, sliding windows) follows the reference implementation. GGUF files (llama.cpp's
//! format) load too, dequantized, or convert to a checkpoint directory ([`gguf`]).

mod altup;
mod attention;
pub mod bnb;
mod cache;
mod checkpoint;
pub mod config;
mod embedding;
mod error;
mod expert_lora;
mod gaussian_topk;
mod generate;
pub mod gguf;
mod head_loss;
mod kv_share;
mod laurel;
mod layer;
mod layer_altup;
mod linear;
mod load;
mod lora;
mod loss;
mod mask;
mod matmul;
mod mlp;
mod model;
mod moe;
mod named;
mod norm;
mod per_layer;
mod reference;
mod rope;
mod sampling;
mod shards;
mod source;
mod weights;

pub use altup::AltUp;
pub use attention::{
    AttendSaved, Attention, AttentionKeep, AttentionSaved, KvSlot, attend, attend_backward, attend_saving,
};
pub use cache::KvCache;
pub use checkpoint::Checkpoint;
pub use config::{Activation, Family, GemmaConfig, LayerType, Moe, PerLayerInputs, Rope};
pub use embedding::Embedding;
pub use error::{ModelError, Result};
pub use expert_lora::{ExpertLoraGrads, ExpertLoras};
pub use generate::{
    BatchDecodeStep, DecodeStep, GenerationConfig, RowByRow, generate_batch_with, generate_with, step_positions,
};
pub use head_loss::HEAD_CHUNK_ROWS;
pub use kv_share::SharedKv;
pub use laurel::Laurel;
pub use layer::{ADAPTER_NAMES, DecoderLayer, LayerGrads, LayerInput, LayerKeep, LayerSaved, PROJECTION_NAMES};
pub use linear::{FrozenWeight, Linear, LinearSaved};
pub use load::LoadOptions;
pub use lora::{Lora, LoraGrads, LoraSaved};
pub use loss::{IGNORE_INDEX, causal_lm_loss_sum, cross_entropy_sum, shift_labels};
pub use mask::AttentionMask;
pub use matmul::{matmul, matmul_transposed};
pub use mlp::{Mlp, MlpKeep, MlpSaved};
pub use model::{ForwardInput, GemmaForCausalLM, GemmaModel, LayerContext};
pub use moe::{Experts, Router, Routing};
pub use named::{NamedParam, named_params};
pub use norm::{RmsNorm, rms_normalize};
pub use reference::{LogitsComparison, LogitsReference};
pub use rope::RopeTables;
pub use sampling::{Sampler, SamplingConfig, argmax};
pub use shards::{MAX_SHARD_BYTES, NamedTensor, torch_dtype_name, write_json, write_safetensors};
pub use source::ModelSource;
