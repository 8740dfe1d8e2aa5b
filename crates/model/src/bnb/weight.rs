//! A frozen projection weight held in bitsandbytes' 4-bit format on the device and dequantized
//! where it is used, as bnb's `Linear4bit` does: the full-precision weight exists one projection
//! at a time, never for the whole model.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData, backend::Backend};

use super::dynamic::dynamic_map;
use super::four_bit::{Absmax, FourBit, NESTED_BLOCKSIZE, NestedAbsmax, QuantType};

/// How a [`FourBitWeight`] was quantized and what it dequantizes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FourBitFormat {
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// `[out_features, in_features]`.
    pub shape: [usize; 2],
    /// The dtype the weight was quantized from (bnb's `quant_state.dtype`): dequantized values
    /// are rounded to it, then cast to the run's dtype.
    pub dtype: DType,
    /// The dtype the model computes in.
    pub compute: DType,
    /// With double quantization, the mean subtracted from the absmax before coding them.
    pub offset: Option<f32>,
}

/// A weight in bitsandbytes' 4-bit format.
#[derive(Module, Debug)]
pub struct FourBitWeight<B: Backend> {
    /// bnb's packed bytes (two codes each, the first in the high nibble) as little-endian
    /// i32 words: eight codes a word, the bytes a kernel reads as `uint8` unchanged.
    pub codes: Param<Tensor<B, 1, Int>>,
    /// Per block of `blocksize` values its absmax; with double quantization, per block of 256
    /// absmax the absmax of those.
    pub absmax: Param<Tensor<B, 1>>,
    /// With double quantization, the absmax's 8-bit codes as little-endian i32 words.
    pub absmax_codes: Option<Param<Tensor<B, 1, Int>>>,
    #[module(skip)]
    pub format: FourBitFormat,
}

impl<B: Backend> FourBitWeight<B> {
    /// Puts `weight` (quantized on the host, or read from a bnb checkpoint) on `device`, in
    /// exact-size ("persistent") allocations as every frozen weight: a pool's pages, partly
    /// filled, kept 0.33 GiB beyond Gemma-2B's 4-bit weights.
    pub fn new(weight: &FourBit, shape: [usize; 2], dtype: DType, compute: DType, device: &B::Device) -> Self {
        let persistent_words = |bytes: &[u8]| B::memory_persistent_allocations(device, bytes, |b| words(b, device));
        let (absmax, absmax_codes, offset) = match &weight.absmax {
            Absmax::Plain(absmax) => (absmax.clone(), None, None),
            Absmax::Nested(NestedAbsmax { codes, absmax, offset }) => (
                absmax.clone(),
                Some(Param::initialized(ParamId::new(), persistent_words(codes))),
                Some(*offset),
            ),
        };
        let len = absmax.len();
        let absmax = B::memory_persistent_allocations(device, absmax, |absmax| {
            Tensor::from_data(TensorData::new(absmax, [len]), (device, DType::F32))
        });
        Self {
            codes: Param::initialized(ParamId::new(), persistent_words(&weight.packed)),
            absmax: Param::initialized(ParamId::new(), absmax.set_require_grad(false)),
            absmax_codes,
            format: FourBitFormat {
                quant_type: weight.quant_type,
                blocksize: weight.blocksize,
                shape,
                dtype,
                compute,
                offset,
            },
        }
    }

    /// The weight `[out, in]` in the compute dtype: `dequantize_4bit(...).to(compute)`.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let FourBitFormat {
            quant_type,
            blocksize,
            shape,
            dtype,
            compute,
            ..
        } = self.format;
        let len = shape[0] * shape[1];
        let device = self.absmax.val().device();
        let table = Tensor::<B, 1>::from_data(
            TensorData::new(quant_type.table().to_vec(), [16]),
            (&device, DType::F32),
        );
        let values = table.select(0, unpack(self.codes.val(), 4, len));
        round_to(
            scale_blocks(values, self.absmax_values(), blocksize).reshape(shape),
            dtype,
        )
        .cast(compute)
    }

    /// The f32 absmax of every block, double quantization decoded as `dequantize_4bit` does.
    fn absmax_values(&self) -> Tensor<B, 1> {
        let (Some(codes), Some(offset)) = (&self.absmax_codes, self.format.offset) else {
            return self.absmax.val();
        };
        let [out, inp] = self.format.shape;
        let blocks = (out * inp).div_ceil(self.format.blocksize);
        let device = self.absmax.val().device();
        let map = Tensor::<B, 1>::from_data(
            TensorData::new(dynamic_map(true).to_vec(), [256]),
            (&device, DType::F32),
        );
        let values = map.select(0, unpack(codes.val(), 8, blocks));
        scale_blocks(values, self.absmax.val(), NESTED_BLOCKSIZE) + offset
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        let words = |t: &Param<Tensor<B, 1, Int>>| 4 * t.val().dims()[0];
        words(&self.codes) + 4 * self.absmax.val().dims()[0] + self.absmax_codes.as_ref().map_or(0, words)
    }
}

/// f32 `values` rounded to `dtype` (bnb rounds the dequantized weight to the dtype it was
/// quantized from), on the host where the backend cannot hold `dtype` (bf16 on the CPU).
fn round_to<B: Backend>(values: Tensor<B, 2>, dtype: DType) -> Tensor<B, 2> {
    let device = values.device();
    if dtype == DType::F32 {
        values
    } else if B::supports_dtype(&device, dtype) {
        values.cast(dtype).cast(DType::F32)
    } else {
        let data = values.into_data().convert_dtype(dtype).convert_dtype(DType::F32);
        Tensor::from_data(data, (&device, DType::F32))
    }
}

/// `values · absmax[block]` for consecutive blocks of `blocksize` (the last may be partial).
fn scale_blocks<B: Backend>(values: Tensor<B, 1>, absmax: Tensor<B, 1>, blocksize: usize) -> Tensor<B, 1> {
    let len = values.dims()[0];
    let blocks = absmax.dims()[0];
    let padded = blocks * blocksize;
    let values = if padded > len {
        let device = values.device();
        Tensor::cat(vec![values, Tensor::zeros([padded - len], &device)], 0)
    } else {
        values
    };
    (values.reshape([blocks, blocksize]) * absmax.reshape([blocks, 1]))
        .reshape([padded])
        .slice(0..len)
}

/// The first `len` codes of `bits` (4 or 8) bits packed in little-endian i32 words, in bnb's
/// order: within a byte the high nibble first.
fn unpack<B: Backend>(words: Tensor<B, 1, Int>, bits: usize, len: usize) -> Tensor<B, 1, Int> {
    let shifts: &[i64] = if bits == 4 {
        &[4, 0, 12, 8, 20, 16, 28, 24]
    } else {
        &[0, 8, 16, 24]
    };
    let mask = (1i64 << bits) - 1;
    let parts = shifts
        .iter()
        .map(|&s| {
            words
                .clone()
                .bitwise_right_shift_scalar(s.elem())
                .bitwise_and_scalar(mask.elem())
                .unsqueeze_dim::<2>(1)
        })
        .collect();
    let count = words.dims()[0] * shifts.len();
    Tensor::cat(parts, 1).reshape([count]).slice(0..len)
}

/// Bytes as little-endian i32 words (zero-padded to a whole word) on `device`.
fn words<B: Backend>(bytes: &[u8], device: &B::Device) -> Tensor<B, 1, Int> {
    let words: Vec<i32> = bytes
        .chunks(4)
        .map(|chunk| {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            i32::from_le_bytes(word)
        })
        .collect();
    let len = words.len();
    Tensor::from_data(TensorData::new(words, [len]), (device, DType::I32))
}
