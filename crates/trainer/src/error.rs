use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot access `{}`: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{}`: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("checkpoint `{}`: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("output_dir `{}`: {message}", path.display())]
    OutputDir { path: PathBuf, message: String },
    #[error(
        "sample {sample} holds token id {id}, but the model's vocabulary has {vocab_size} ids: the tokenizer \
         is not this model's (use the model's own tokenizer.json, or a model of this vocabulary)"
    )]
    TokenOutOfVocab { sample: usize, id: u32, vocab_size: usize },
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error("training kernels: {0}")]
    Kernels(String),
    #[error(
        "the run needs about {needed} on the device but {free:.2} GiB are free: lower [training] \
         per_device_train_batch_size or [data] max_seq_length, set [training] \
         offload_activations = true and gradient_checkpointing = true, or train in bf16"
    )]
    DoesNotFit {
        needed: crate::estimate::MemoryEstimate,
        free: f64,
    },
    #[error("data-parallel run: {0}")]
    Collective(#[from] crate::distributed::CollectiveError),
    #[error(transparent)]
    Model(#[from] ember_model::ModelError),
    #[error(transparent)]
    Lora(#[from] ember_lora::LoraError),
    #[error(transparent)]
    Data(#[from] ember_data::DataError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
