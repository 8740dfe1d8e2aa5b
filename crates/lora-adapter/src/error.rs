use std::path::PathBuf;

/// Everything that can go wrong building, reading or writing an adapter.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot access `{}`: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{}` is not valid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("`{}`: key `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("`{}` is not a readable safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("adapter `{}` is missing tensor `{key}`", path.display())]
    MissingTensor { path: PathBuf, key: String },
    #[error(
        "adapter tensor `{key}` in `{}` has shape {found:?}, but the model needs {expected:?}: was it trained for another model size?",
        path.display()
    )]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("adapter `{}` has {count} tensor(s) this model has no place for, e.g. `{first}`: was it trained for another architecture?", path.display())]
    UnexpectedTensors { path: PathBuf, count: usize, first: String },
    #[error("the model has no LoRA adapter to {0}")]
    NoAdapter(&'static str),
    #[error(transparent)]
    Model(#[from] ember_model::ModelError),
}

pub type Result<T, E = LoraError> = std::result::Result<T, E>;

impl LoraError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
