/// What can go wrong on the CPU fast path.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The model (or a step) is one the CPU decoder does not run; generation uses burn's ops.
    #[error("{0}")]
    Unsupported(String),
    /// A step the decoder cannot take (past its capacity, a token outside the vocabulary).
    #[error("{0}")]
    Step(String),
    #[error("reading the weight `{name}`: {message}")]
    Weight { name: String, message: String },
}

pub type Result<T, E = CpuError> = std::result::Result<T, E>;

impl From<CpuError> for ember_trainer::TrainError {
    fn from(e: CpuError) -> Self {
        ember_trainer::TrainError::Kernels(e.to_string())
    }
}
