//! Ember's supervised fine-tuning: the training loop, optimizers and checkpoints.

pub mod checkpoint;
pub mod config;
pub mod distributed;
mod error;
pub mod estimate;
pub mod eval;
pub mod grads;
mod init_from;
pub mod kernels;
pub mod optim;
pub mod output_dir;
pub mod phases;
mod resume;
pub mod schedule;
mod setup;
pub mod step;
pub mod trainer;

pub use error::{Result, TrainError};
