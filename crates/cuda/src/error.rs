/// What can go wrong on the CUDA fast path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLASLt: {0}")]
    Blas(#[from] cudarc::cublaslt::result::CublasError),
    #[error("compiling Ember's CUDA kernels with NVRTC: {0}")]
    Compile(String),
    #[error("burn's CUDA backend: {0}")]
    Backend(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = CudaError> = std::result::Result<T, E>;

impl From<CudaError> for ember_trainer::TrainError {
    fn from(e: CudaError) -> Self {
        ember_trainer::TrainError::Kernels(e.to_string())
    }
}
