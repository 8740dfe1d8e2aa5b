use burn::module::{Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use indicatif::ProgressBar;

use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// Tensors by their Hugging Face names, whichever file format holds them.
pub(crate) trait TensorSource {
    /// Reads `key`, checking its shape, converted to `dtype`.
    fn read(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData>;
    /// Marks `key` as deliberately unused (e.g. an `lm_head.weight` tied to the embedding).
    fn skip(&mut self, key: &str);
}

impl TensorSource for Checkpoint {
    fn read(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        Checkpoint::read(self, key, shape, dtype)
    }

    fn skip(&mut self, key: &str) {
        Checkpoint::skip(self, key)
    }
}

/// Turns checkpoint tensors into frozen parameters on a device, in the run dtype.
pub struct Weights<'a, B: Backend> {
    pub(crate) source: &'a mut dyn TensorSource,
    pub(crate) device: B::Device,
    pub(crate) dtype: DType,
    pub(crate) progress: ProgressBar,
}

impl<B: Backend> Weights<'_, B> {
    /// The parameter `key` of the given shape. Base weights are frozen: no gradient is
    /// ever computed or stored for them.
    pub fn param<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Param<Tensor<B, D>>> {
        let data = self.source.read(key, &shape, self.dtype)?;
        self.progress.inc(data.as_bytes().len() as u64);
        let tensor = Tensor::from_data(data, (&self.device, self.dtype));
        Ok(Param::initialized(ParamId::new(), tensor.set_require_grad(false)))
    }
}
