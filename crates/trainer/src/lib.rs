//! Ember's supervised fine-tuning: the training loop, optimizers and checkpoints.

pub mod grads;
pub mod optim;
pub mod schedule;
