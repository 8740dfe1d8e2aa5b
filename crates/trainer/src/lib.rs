//! The SFT loop, optimizers and checkpoints. Filled by the trainer issue.
