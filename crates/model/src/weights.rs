use std::path::PathBuf;

use burn::module::{Param, ParamId};
use burn::tensor::{DType, Distribution, Tensor, TensorData, backend::Backend};
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bnb::{
    Absmax, BLOCKSIZE, FourBit, FourBitConfig, FourBitWeight, NESTED_BLOCKSIZE, NestedAbsmax, dynamic_map,
    quantize_blockwise, read_four_bit,
};
use crate::checkpoint::Checkpoint;
use crate::error::{ModelError, Result};
use crate::linear::FrozenWeight;

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
    /// Whether the source holds `key`.
    fn contains(&self, key: &str) -> bool;
    /// Reads `key` unconverted; it must be stored as `dtype` (and `shape`, if given).
    fn read_exact(&mut self, key: &str, shape: Option<&[usize]>, dtype: DType) -> Result<TensorData>;
    /// Where the tensors are, for messages.
    fn path(&self) -> PathBuf;
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

    fn contains(&self, key: &str) -> bool {
        Checkpoint::contains(self, key)
    }

    fn read_exact(&mut self, key: &str, shape: Option<&[usize]>, dtype: DType) -> Result<TensorData> {
        Checkpoint::read_exact(self, key, shape, dtype)
    }

    fn path(&self) -> PathBuf {
        self.dir().to_path_buf()
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
    /// Loading in 4 bits: the projections it applies to are quantized as they are read.
    pub(crate) four_bit: Option<FourBitConfig>,
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

    /// The frozen weight of the projection `module` (`{module}.weight`, `[out, in]`): as the
    /// checkpoint stores it when that is bitsandbytes' 4-bit format, quantized as it is read
    /// when loading in 4 bits applies to `module`, dense otherwise.
    pub fn projection(&mut self, module: &str, shape: [usize; 2]) -> Result<FrozenWeight<B>> {
        let key = format!("{module}.weight");
        let quantize = self.four_bit.as_ref().filter(|c| c.quantizes(module)).cloned();
        let (device, dtype) = (&self.device, self.dtype);
        let (weight, from) = match &mut self.source {
            Source::Tensors(source) => match read_four_bit(*source, &key, shape)? {
                Some(stored) => stored,
                None => match quantize {
                    // transformers loads the weight in the run dtype, then quantizes that.
                    Some(config) => {
                        let data = source.read(&key, &shape, dtype)?;
                        self.progress.inc(data.as_bytes().len() as u64);
                        let values = data
                            .convert_dtype(DType::F32)
                            .into_vec::<f32>()
                            .expect("converted to f32");
                        let weight = FourBit::quantize(&values, config.quant_type, BLOCKSIZE, config.double_quant);
                        (weight, dtype)
                    }
                    None => return self.param(&key, shape).map(FrozenWeight::Dense),
                },
            },
            Source::Check { source, problems } => match read_four_bit(*source, &key, shape) {
                Ok(Some(stored)) => stored,
                Ok(None) => return self.param(&key, shape).map(FrozenWeight::Dense),
                Err(problem) => {
                    problems.push(problem);
                    return self.param(&key, shape).map(FrozenWeight::Dense);
                }
            },
            Source::Random { std } => match quantize {
                Some(config) => (random_four_bit(shape, *std, &config), dtype),
                None => return self.param(&key, shape).map(FrozenWeight::Dense),
            },
        };
        Ok(FrozenWeight::FourBit(FourBitWeight::new(
            &weight, shape, from, dtype, device,
        )))
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

/// A 4-bit weight of random codes whose dequantized values have about the spread of
/// Normal(0, `std`): what benchmarks need, drawn on the host in a fraction of the time normal
/// values and their quantization would take.
fn random_four_bit(shape: [usize; 2], std: f64, config: &FourBitConfig) -> FourBit {
    let len = shape[0] * shape[1];
    let mut rng = StdRng::seed_from_u64(len as u64);
    let mut packed = vec![0u8; len.div_ceil(2)];
    rng.fill(packed.as_mut_slice());
    let blocks = len.div_ceil(BLOCKSIZE);
    // A block of 64 normal values has its absmax near 2.4 standard deviations.
    let scale = (2.4 * std) as f32;
    let absmax = if config.double_quant {
        // Equal absmax centre to zeros, coded as 0 · 0; the offset holds them.
        let (codes, absmax) = quantize_blockwise(&vec![0.0; blocks], &dynamic_map(true), NESTED_BLOCKSIZE);
        Absmax::Nested(NestedAbsmax {
            codes,
            absmax,
            offset: scale,
        })
    } else {
        Absmax::Plain(vec![scale; blocks])
    };
    FourBit {
        quant_type: config.quant_type,
        blocksize: BLOCKSIZE,
        len,
        packed,
        absmax,
    }
}
