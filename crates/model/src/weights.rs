use burn::module::{Param, ParamId};
use burn::tensor::{DType, Tensor, backend::Backend};
use indicatif::ProgressBar;

use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// Turns checkpoint tensors into frozen parameters on a device, in the run dtype.
pub struct Weights<'a, B: Backend> {
    pub(crate) checkpoint: &'a mut Checkpoint,
    pub(crate) device: B::Device,
    pub(crate) dtype: DType,
    pub(crate) progress: ProgressBar,
}

impl<B: Backend> Weights<'_, B> {
    /// The parameter `key` of the given shape. Base weights are frozen: no gradient is
    /// ever computed or stored for them.
    pub fn param<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Param<Tensor<B, D>>> {
        let data = self.checkpoint.read(key, &shape, self.dtype)?;
        self.progress.inc(data.as_bytes().len() as u64);
        let tensor = Tensor::from_data(data, (&self.device, self.dtype));
        Ok(Param::initialized(ParamId::new(), tensor.set_require_grad(false)))
    }
}
