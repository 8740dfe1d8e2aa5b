use burn::module::{Param, ParamId};
use burn::tensor::{DType, Distribution, Tensor, TensorData, backend::Backend};
use indicatif::ProgressBar;

use crate::checkpoint::Checkpoint;
use crate::error::{ModelError, Result};

/// Tensors by their Hugging Face names, whichever file format holds them.
pub(crate) trait TensorSource {
    /// Reads `key`, checking its shape, converted to `dtype`.
    fn read(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData>;
    /// Checks that `key` is present, of `shape` and of a readable dtype, without reading it.
    fn check(&mut self, key: &str, shape: &[usize]) -> Result<()>;
    /// Marks `key` as deliberately unused (e.g. an `lm_head.weight` tied to the embedding).
    fn skip(&mut self, key: &str);
    /// The tensors neither read, checked nor skipped.
    fn unused(&self) -> Vec<String>;
}

impl TensorSource for Checkpoint {
    fn read(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        Checkpoint::read(self, key, shape, dtype)
    }

    fn check(&mut self, key: &str, shape: &[usize]) -> Result<()> {
        Checkpoint::check(self, key, shape)
    }

    fn skip(&mut self, key: &str) {
        Checkpoint::skip(self, key)
    }

    fn unused(&self) -> Vec<String> {
        Checkpoint::unused(self)
    }
}

/// Where parameter values come from.
pub(crate) enum Source<'a> {
    Tensors(&'a mut dyn TensorSource),
    /// Only checks each tensor against the config, collecting what is wrong; the parameters
    /// are one-element placeholders.
    Check {
        source: &'a mut dyn TensorSource,
        problems: Vec<ModelError>,
    },
    /// Normal(0, std) drawn on the device: a real shape without a real checkpoint (benchmarks).
    Random {
        std: f64,
    },
}

/// Turns checkpoint tensors (or random values) into frozen parameters on a device, in the
/// run dtype.
pub struct Weights<'a, B: Backend> {
    pub(crate) source: Source<'a>,
    pub(crate) device: B::Device,
    pub(crate) dtype: DType,
    pub(crate) progress: ProgressBar,
}

impl<B: Backend> Weights<'_, B> {
    /// The parameter `key` of the given shape. Base weights are frozen: no gradient is
    /// ever computed or stored for them.
    pub fn param<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Param<Tensor<B, D>>> {
        let (device, dtype) = (&self.device, self.dtype);
        // Weights live as long as the model: exact-size ("persistent") allocations. The pool's
        // pages would otherwise round them up, a 1 GiB embedding into a page of a quarter of
        // the card (8 GiB of an H200 reserved beyond the weights).
        let tensor = match &mut self.source {
            Source::Tensors(source) => {
                let data = source.read(key, &shape, dtype)?;
                self.progress.inc(data.as_bytes().len() as u64);
                B::memory_persistent_allocations(device, data, |data| Tensor::from_data(data, (device, dtype)))
            }
            Source::Check { source, problems } => {
                if let Err(problem) = source.check(key, &shape) {
                    problems.push(problem);
                }
                Tensor::zeros([1; D], device)
            }
            // Drawn in the run dtype, as a checkpoint's load makes no f32 temporaries either.
            Source::Random { std } => B::memory_persistent_allocations(device, *std, |std| {
                Tensor::<B, D>::random(shape, Distribution::Normal(0.0, std), (device, dtype))
            }),
        };
        Ok(Param::initialized(ParamId::new(), tensor.set_require_grad(false)))
    }

    /// Marks `key` as deliberately unused (a checkpoint reports unread tensors otherwise).
    pub(crate) fn skip(&mut self, key: &str) {
        match &mut self.source {
            Source::Tensors(source) | Source::Check { source, .. } => source.skip(key),
            Source::Random { .. } => {}
        }
    }

    /// Marks every unread tensor outside the modules named by `keep` (name prefixes) as
    /// deliberately unused: a multimodal checkpoint's other towers. Returns them grouped by
    /// module (the first two name segments, `model.vision_tower`), with their counts.
    pub(crate) fn skip_outside(&mut self, keep: &[&str]) -> Vec<(String, usize)> {
        let source = match &mut self.source {
            Source::Tensors(source) | Source::Check { source, .. } => source,
            Source::Random { .. } => return Vec::new(),
        };
        let mut groups: Vec<(String, usize)> = Vec::new();
        for name in source.unused() {
            if keep.iter().any(|prefix| name.starts_with(prefix)) {
                continue;
            }
            source.skip(&name);
            let module = name.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
            match groups.iter_mut().find(|(m, _)| *m == module) {
                Some((_, count)) => *count += 1,
                None => groups.push((module, 1)),
            }
        }
        groups
    }
}
