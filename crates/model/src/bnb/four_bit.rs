//! bitsandbytes' 4-bit blockwise formats (QLoRA's NF4 and FP4) on the host, as
//! `quantize_4bit` and `dequantize_4bit` compute them on the GPU (`kQuantizeBlockwise` and
//! `kDequantizeBlockwise` in `csrc/kernels.cu`, `bitsandbytes/functional.py`).
//!
//! Per block of `blocksize` values (64 in transformers): the absolute maximum, then each value
//! times its reciprocal coded by the kernel's decision tree; two codes per byte, the first in
//! the high nibble. Double quantization codes those absmax once more, minus their mean, with
//! the dynamic 8-bit map in blocks of 256.

use std::str::FromStr;

use super::dynamic::{dequantize_blockwise, dynamic_map, quantize_blockwise};

/// The absmax blocks of double quantization (bnb's `quantize_blockwise(..., blocksize=256)`).
pub const NESTED_BLOCKSIZE: usize = 256;

/// The two 4-bit data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// NormalFloat4: quantiles of a standard normal, QLoRA's default.
    Nf4,
    /// A 4-bit float (1 sign, 2 exponent, 1 mantissa bit), scaled to [-1, 1].
    Fp4,
}

/// The NF4 values (bnb's `get_4bit_type("nf4")`, the kernel's `nf4_dequantization_lut`).
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The NF4 decision tree's thresholds, ascending: the code is how many `x` exceeds (the tree
/// is a search over these sorted values).
const NF4_THRESHOLDS: [f32; 15] = [
    -0.848_096_43,
    -0.610_632_9,
    -0.459_995_27,
    -0.339_679_42,
    -0.234_607_4,
    -0.137_911_74,
    -0.045_525_018,
    0.039_790_15,
    0.120_255_254,
    0.203_521_25,
    0.292_013_76,
    0.389_312_54,
    0.501_663_4,
    0.642_786_9,
    0.861_478_4,
];

/// FP4 magnitudes by the three low bits (the kernel's `fp4_dequantization_lut`).
const FP4_MAGNITUDES: [f32; 8] = [
    0.0,
    0.005_208_333_5,
    0.666_666_7,
    1.0,
    0.333_333_33,
    0.5,
    0.166_666_67,
    0.25,
];

/// The FP4 tree's magnitude thresholds, ascending, and the code of each interval.
const FP4_THRESHOLDS: [f32; 7] = [
    0.002_604_17,
    0.085_937_5,
    0.208_333_33,
    0.291_666_67,
    0.416_666_7,
    0.583_333,
    0.833_333_3,
];
const FP4_CODES: [u8; 8] = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

impl QuantType {
    /// bnb's name (`"nf4"`, `"fp4"`), as in `bnb_4bit_quant_type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Fp4 => "fp4",
        }
    }

    /// The value each code stands for, by code (FP4's code 8 is -0.0, as the kernel's sign).
    pub fn table(self) -> [f32; 16] {
        match self {
            Self::Nf4 => NF4,
            Self::Fp4 => std::array::from_fn(|c| {
                let sign = if c & 0b1000 != 0 { -1.0 } else { 1.0 };
                FP4_MAGNITUDES[c & 0b111] * sign
            }),
        }
    }

    /// The code of `x` (a value over its block's absmax), by the kernel's tree. NaN (a block of
    /// zeros: 0 · inf) is code 0, as every comparison fails.
    pub fn encode(self, x: f32) -> u8 {
        match self {
            Self::Nf4 => NF4_THRESHOLDS.iter().filter(|&&t| x > t).count() as u8,
            Self::Fp4 => {
                let sign = if x < 0.0 { 0b1000 } else { 0 };
                let magnitude = x.abs();
                FP4_CODES[FP4_THRESHOLDS.iter().filter(|&&t| magnitude > t).count()] + sign
            }
        }
    }
}

impl FromStr for QuantType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nf4" => Ok(Self::Nf4),
            "fp4" => Ok(Self::Fp4),
            other => Err(format!("`{other}` is not a 4-bit type: use \"nf4\" or \"fp4\"")),
        }
    }
}

/// Double quantization of the absmax: 8-bit codes, their blocks' absmax and the mean that was
/// subtracted first.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedAbsmax {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
    pub offset: f32,
}

/// A block's absmax, plain (f32) or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    Plain(Vec<f32>),
    Nested(NestedAbsmax),
}

impl Absmax {
    /// The f32 absmax, decoding double quantization as `dequantize_4bit` does:
    /// `dequantize_blockwise(codes) + offset`.
    pub fn values(&self) -> Vec<f32> {
        match self {
            Self::Plain(values) => values.clone(),
            Self::Nested(nested) => {
                let map = dynamic_map(true);
                dequantize_blockwise(&nested.codes, &nested.absmax, &map, NESTED_BLOCKSIZE)
                    .into_iter()
                    .map(|v| v + nested.offset)
                    .collect()
            }
        }
    }
}

/// A tensor in bitsandbytes' 4-bit format.
#[derive(Debug, Clone, PartialEq)]
pub struct FourBit {
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// How many values (the tensor's element count).
    pub len: usize,
    /// Two codes per byte, the first in the high nibble; `len.div_ceil(2)` bytes.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

impl FourBit {
    /// `quantize_4bit(values, blocksize, compress_statistics=double, quant_type)`.
    ///
    /// The absmax are bnb's bit for bit, and so are the codes but for values that fall within
    /// rounding of a decision threshold: bnb is built with `--use_fast_math`, so its kernel's
    /// `1 / absmax` is the GPU's approximate reciprocal, which can differ from the exact one in
    /// the last bit (about 0.1% of codes from bf16 weights, ties being common there; none in
    /// the f32 fixtures). With double quantization the mean of the absmax is summed in f64 and
    /// rounded once; torch sums it in f32 in its own order, so the offset may differ in the
    /// last bits.
    pub fn quantize(values: &[f32], quant_type: QuantType, blocksize: usize, double: bool) -> Self {
        let blocks = values.len().div_ceil(blocksize);
        let mut packed = vec![0u8; values.len().div_ceil(2)];
        let mut absmax = vec![0f32; blocks];
        // Blocks are independent: split them over the cores (a 9B model is 140M blocks).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let blocks_per_thread = blocks.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let chunks = values
                .chunks(blocks_per_thread * blocksize)
                .zip(packed.chunks_mut(blocks_per_thread * blocksize / 2))
                .zip(absmax.chunks_mut(blocks_per_thread));
            for ((values, packed), absmax) in chunks {
                scope.spawn(move || quantize_blocks(values, quant_type, blocksize, packed, absmax));
            }
        });
        let absmax = if double {
            let offset = (absmax.iter().map(|&v| v as f64).sum::<f64>() / blocks as f64) as f32;
            let centred: Vec<f32> = absmax.iter().map(|&v| v - offset).collect();
            let (codes, absmax) = quantize_blockwise(&centred, &dynamic_map(true), NESTED_BLOCKSIZE);
            Absmax::Nested(NestedAbsmax { codes, absmax, offset })
        } else {
            Absmax::Plain(absmax)
        };
        Self {
            quant_type,
            blocksize,
            len: values.len(),
            packed,
            absmax,
        }
    }

    /// `dequantize_4bit` in f32: `table[code] · absmax` (the kernel rounds this product to the
    /// quantized tensor's dtype).
    pub fn dequantize(&self) -> Vec<f32> {
        let table = self.quant_type.table();
        let absmax = self.absmax.values();
        (0..self.len)
            .map(|i| {
                let byte = self.packed[i / 2];
                let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                table[code as usize] * absmax[i / self.blocksize]
            })
            .collect()
    }
}

/// Quantizes whole blocks (the last may be partial) into `packed` and `absmax`.
fn quantize_blocks(values: &[f32], quant_type: QuantType, blocksize: usize, packed: &mut [u8], absmax: &mut [f32]) {
    for (b, block) in values.chunks(blocksize).enumerate() {
        let max = block.iter().fold(-f32::MAX, |m, v| m.max(v.abs()));
        absmax[b] = max;
        let inv = 1.0 / max;
        // An odd tail pairs its last value with the kernel's zero padding.
        for (pair, out) in block.chunks(2).zip(&mut packed[b * blocksize / 2..]) {
            let second = pair.get(1).copied().unwrap_or(0.0);
            *out = (quant_type.encode(pair[0] * inv) << 4) | quant_type.encode(second * inv);
        }
    }
}

#[cfg(test)]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;

    /// The kernel's trees as written there, literals verbatim.
    fn nf4_tree(x: f32) -> u8 {
        if x > 0.03979014977812767 {
            if x > 0.3893125355243683 {
                if x > 0.6427869200706482 {
                    if x > 0.8614784181118011 { 0b1111 } else { 0b1110 }
                } else if x > 0.5016634166240692 {
                    0b1101
                } else {
                    0b1100
                }
            } else if x > 0.2035212516784668 {
                if x > 0.2920137718319893 { 0b1011 } else { 0b1010 }
            } else if x > 0.1202552504837513 {
                0b1001
            } else {
                0b1000
            }
        } else if x > -0.33967943489551544 {
            if x > -0.13791173323988914 {
                if x > -0.045525018125772476 { 0b0111 } else { 0b0110 }
            } else if x > -0.23460740596055984 {
                0b0101
            } else {
                0b0100
            }
        } else if x > -0.6106329262256622 {
            if x > -0.4599952697753906 { 0b0011 } else { 0b0010 }
        } else if x > -0.8480964004993439 {
            0b0001
        } else {
            0b0000
        }
    }

    fn fp4_tree(x: f32) -> u8 {
        let sign = if x < 0.0 { 0b1000 } else { 0 };
        let x = x.abs();
        let code = if x > 0.29166667 {
            if x > 0.583333 {
                if x > 0.8333333 { 0b0011 } else { 0b0010 }
            } else if x > 0.4166667 {
                0b101
            } else {
                0b100
            }
        } else if x > 0.0859375 {
            if x > 0.20833333 { 0b0111 } else { 0b0110 }
        } else if x > 0.00260417 {
            0b0001
        } else {
            0b0000
        };
        code + sign
    }

    #[test]
    fn encoders_are_the_kernels_trees_at_every_threshold() {
        let mut xs = vec![-1.0f32, 1.0, 0.0, -0.0, f32::NAN, 1.5, -1.5];
        for t in NF4_THRESHOLDS.iter().chain(&FP4_THRESHOLDS) {
            for t in [*t, -*t] {
                xs.extend([t, f32::from_bits(t.to_bits() + 1), f32::from_bits(t.to_bits() - 1)]);
            }
        }
        for x in xs {
            assert_eq!(QuantType::Nf4.encode(x), nf4_tree(x), "nf4 {x}");
            assert_eq!(QuantType::Fp4.encode(x), fp4_tree(x), "fp4 {x}");
        }
    }

    #[test]
    fn every_code_decodes_to_a_value_that_encodes_back_to_it() {
        for quant_type in [QuantType::Nf4, QuantType::Fp4] {
            for (code, value) in quant_type.table().into_iter().enumerate() {
                // FP4's -0.0 (code 8) encodes as +0 (code 0): the kernel's sign test is `x < 0`.
                let expected = if value == 0.0 {
                    quant_type.encode(0.0)
                } else {
                    code as u8
                };
                assert_eq!(quant_type.encode(value), expected, "{quant_type:?} code {code}");
            }
        }
    }

    #[test]
    fn odd_lengths_pad_the_last_byte_with_the_code_of_zero() {
        let q = FourBit::quantize(&[1.0, -1.0, 0.5], QuantType::Nf4, 64, false);
        assert_eq!(q.packed, vec![0xf0, (QuantType::Nf4.encode(0.5) << 4) | 0b0111]);
        assert_eq!(q.absmax, Absmax::Plain(vec![1.0]));
        assert_eq!(q.dequantize()[..2], [1.0, -1.0]);
    }
}
