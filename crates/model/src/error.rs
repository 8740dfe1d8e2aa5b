use std::path::PathBuf;

/// Everything that can go wrong loading or running a Gemma checkpoint.
///
/// Messages name the file and the key so a user can fix the input.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{}` is not valid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("`{}`: key `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "`{}`: model_type `{found}` is not supported; Ember runs gemma, gemma2, gemma3_text, gemma3n(_text) and gemma4(_text)",
        path.display()
    )]
    UnknownModelType { path: PathBuf, found: String },
    #[error("`{}` is not a readable safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("checkpoint `{}` has no weights: expected model.safetensors or model.safetensors.index.json", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("checkpoint `{}` is missing tensor `{key}`", dir.display())]
    MissingTensor { dir: PathBuf, key: String },
    #[error("tensor `{key}` in `{}` has shape {found:?}, but config.json implies {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{key}` in `{}` has dtype {dtype}; Ember reads F32, BF16 and F16", path.display())]
    UnsupportedDtype { path: PathBuf, key: String, dtype: String },
    #[error("checkpoint `{}` has {count} tensor(s) the model does not use, e.g. `{first}`", dir.display())]
    UnexpectedTensors { dir: PathBuf, count: usize, first: String },
    #[error("`{}` is not a readable GGUF file: {message}", path.display())]
    Gguf { path: PathBuf, message: String },
    #[error(
        "tensor `{tensor}` in `{}` is stored as {ggml_type}; Ember reads {}",
        path.display(),
        crate::gguf::GgmlType::SUPPORTED
    )]
    UnsupportedGgmlType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
    },
    #[error(
        "`{}`: GGUF architecture `{found}` is not supported; Ember imports gemma, gemma2 and gemma3",
        path.display()
    )]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("tokenizer `{}`: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{0}")]
    Generation(String),
    #[error(transparent)]
    Data(#[from] ember_data::DataError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
