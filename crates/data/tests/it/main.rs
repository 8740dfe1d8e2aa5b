//! ember-data's integration tests, one binary (one link on a 2-core machine).
//!
//! Tests marked "real tokenizer" need `cargo xtask fetch-assets`; without the assets they fail
//! naming it, and with `EMBER_SKIP_ASSET_TESTS=1` they print "skipped" and pass.

mod batching;
mod chat;
mod common;
mod config;
mod errors;
mod gemma;
mod masks;
mod ollama;
mod readers;
mod report;
mod stream;
mod throughput;
