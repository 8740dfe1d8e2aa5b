//! ember-lora's integration tests in one binary (each apart linked its own copy of burn's
//! generic code): adapters against PEFT, the round trip through PEFT and transformers, and
//! GGUF LoRA files.

mod adapter;
mod common;
mod experts;
mod gguf_lora;
mod peft_parity;
mod roundtrip;
