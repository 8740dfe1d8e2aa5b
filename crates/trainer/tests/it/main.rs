//! ember-trainer's integration tests, one binary: each test file apart was its own link and its
//! own copy of burn's generic code (about a minute apiece on 2 cores).

mod adamw8bit;
mod common;
mod data_parallel;
mod estimate;
mod grads;
mod init_from;
mod output_dir;
mod qlora;
mod real_model;
mod reference_loop;
mod train;
mod wgpu_train;
