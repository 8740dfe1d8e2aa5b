//! bitsandbytes' quantization formats, bit for bit: the 4-bit NF4/FP4 weights of QLoRA
//! (`load_in_4bit`) and the dynamic 8-bit map its double quantization (and bnb's 8-bit
//! optimizers) use.

mod checkpoint;
mod config;
mod dynamic;
mod four_bit;
mod weight;

pub(crate) use checkpoint::read_four_bit;
pub use config::{BLOCKSIZE, FourBitConfig};
pub use dynamic::{dequantize_blockwise, dynamic_map, nearest, quantize_blockwise};
pub use four_bit::{Absmax, FourBit, NESTED_BLOCKSIZE, NestedAbsmax, QuantType};
pub use weight::{FourBitFormat, FourBitWeight};
