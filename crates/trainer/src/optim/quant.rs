//! bitsandbytes' dynamic 8-bit quantization, as its blockwise 8-bit optimizers use it: 256-value
//! non-linear maps (`create_dynamic_map` in `bitsandbytes/functional.py`) and, per block of 256
//! values, codes into the map scaled by the block's absolute maximum.
//!
//! The maps are reproduced value for value and the encoder is the search of the optimizer kernels
//! (`quantize_2D` and the sign fix of `kOptimizerStatic8bit2StateBlockwise` in `csrc/kernels.cu`),
//! including their tie-breaking, so quantized states are those bitsandbytes would store.

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};
pub use ember_model::bnb::dynamic_map;

/// Values per block sharing one absmax (bnb's `BLOCKSIZE_2STATE`).
pub const BLOCK: usize = 256;

/// Index of 0.0 in the signed map: the 127 negative values sort below it.
const SIGNED_ZERO: i64 = 127;

/// One dynamic map on the device, with the encoder and decoder of bnb's 8-bit optimizer states.
pub struct DynamicMap<B: Backend> {
    signed: bool,
    /// The value bnb's search compares with first (index 127), known on the host.
    root: f32,
    /// The 256 values, ascending.
    values: Tensor<B, 1>,
    /// `values` behind the bound bnb's search assumes below index 0 (-1 signed, 0 unsigned), so
    /// "the neighbour at index p - 1" is one gather even for p = 0.
    below_and_values: Tensor<B, 1>,
}

impl<B: Backend> DynamicMap<B> {
    pub fn new(signed: bool, device: &B::Device) -> Self {
        let values = dynamic_map(signed);
        let below = if signed { -1.0 } else { 0.0 };
        let extended: Vec<f32> = std::iter::once(below).chain(values).collect();
        let tensor = |v: Vec<f32>| {
            let len = v.len();
            Tensor::from_data(TensorData::new(v, [len]), (device, DType::F32))
        };
        Self {
            signed,
            root: values[SIGNED_ZERO as usize],
            values: tensor(values.to_vec()),
            below_and_values: tensor(extended),
        }
    }

    /// Block values from codes (any int dtype) and per-block absmax: `map[code] · absmax`.
    ///
    /// # Shapes
    /// codes `[blocks · 256]`, absmax `[blocks]` → `[blocks, 256]`
    pub fn dequantize(&self, codes: Tensor<B, 1, Int>, absmax: Tensor<B, 1>) -> Tensor<B, 2> {
        let blocks = absmax.dims()[0];
        self.values.clone().select(0, codes).reshape([blocks, BLOCK]) * absmax.reshape([blocks, 1])
    }

    /// Codes and per-block absmax of `values`, as bnb's optimizer kernel requantizes a state.
    ///
    /// Each value divided by its block's absmax goes to the nearest map value; for the signed
    /// map, a code whose value has the other sign than the state's (a small negative rounded to
    /// +0, or anything in a block of zeros, where 0/0 is NaN and lands on code 0) moves one step
    /// towards the state's sign, wrapping as the kernel's `unsigned char` does.
    ///
    /// # Shapes
    /// `[blocks, 256]` → codes `[blocks · 256]` (the backend's default int dtype), absmax `[blocks]`
    pub fn quantize(&self, values: Tensor<B, 2>) -> (Tensor<B, 1, Int>, Tensor<B, 1>) {
        let [blocks, block] = values.dims();
        let absmax = values.clone().abs().max_dim(1); // [blocks, 1]
        let scaled = (values.clone() / absmax.clone()).reshape([blocks * block]);
        let mut codes = self.nearest(scaled);
        if self.signed {
            let values = values.reshape([blocks * block]);
            let code_negative = codes.clone().lower_elem(SIGNED_ZERO);
            // The sign bit of the state, -0.0 included: 1/-0 is -inf.
            let value_negative = values.clone().recip().lower_elem(0.0);
            let flip = code_negative.not_equal(value_negative).int();
            let direction = values.greater_elem(0.0).int() * 2 - 1;
            codes = (codes + flip * direction + 256).remainder_scalar(256);
        }
        (codes, absmax.reshape([blocks]))
    }

    /// bnb's `quantize_2D`: a binary search over the sorted map (7 halvings from index 127 to an
    /// even leaf p), then the nearer of p and the neighbour on x's side, by comparing with their
    /// midpoint `(a + b) · 0.5`; a value exactly on the midpoint keeps p. NaN ends at code 0.
    /// Eight gathers, whatever the map size of 256 makes the depth.
    fn nearest(&self, x: Tensor<B, 1>) -> Tensor<B, 1, Int> {
        let device = x.device();
        let mut pivot = Tensor::<B, 1, Int>::full(x.dims(), SIGNED_ZERO, &device);
        let mut above = x.clone().greater_elem(self.root);
        for half in [64, 32, 16, 8, 4, 2] {
            pivot = pivot + above.int() * (2 * half) - half;
            above = x.clone().greater(self.values.clone().select(0, pivot.clone()));
        }
        pivot = pivot + above.int() * 2 - 1;
        let value = self.values.clone().select(0, pivot.clone());
        let above = x.clone().greater(value.clone());
        // The neighbour p + 1 above, p - 1 below, read at index + 1 of `below_and_values`.
        let neighbour = self
            .below_and_values
            .clone()
            .select(0, pivot.clone() + above.clone().int() * 2);
        let midpoint = (neighbour + value) * 0.5;
        let up = above.clone().bool_and(x.clone().greater(midpoint.clone()));
        let down = above.bool_not().bool_and(x.lower(midpoint));
        // Below code 0 the kernel's lower neighbour is code 0 itself.
        (pivot + up.int() - down.int()).clamp_min(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    /// The kernel's search, written as the scalar loop it is (`quantize_2D`).
    fn quantize_2d(code: &[f32; 256], signed: bool, x: f32) -> i64 {
        let (mut pivot, mut upper_pivot, mut lower_pivot) = (127i64, 255i64, 0i64);
        let (mut lower, mut upper) = (if signed { -1.0f32 } else { 0.0 }, 1.0f32);
        let mut val = code[127];
        for i in [64, 32, 16, 8, 4, 2, 1] {
            if x > val {
                lower_pivot = pivot;
                lower = val;
                pivot += i;
            } else {
                upper_pivot = pivot;
                upper = val;
                pivot -= i;
            }
            val = code[pivot as usize];
        }
        if x > val {
            if x > (upper + val) * 0.5 { upper_pivot } else { pivot }
        } else if x < (lower + val) * 0.5 {
            lower_pivot
        } else {
            pivot
        }
    }

    #[test]
    fn nearest_code_is_the_kernels_search() {
        let device = Default::default();
        for signed in [true, false] {
            let code = dynamic_map(signed);
            // Every map value, every midpoint and its float neighbours, the ends and beyond.
            let mut xs = vec![-1.5f32, -1.0, 1.0, 1.5, 0.0, -0.0, f32::NAN, 1e-9, -1e-9];
            for w in code.windows(2) {
                let mid = (w[0] + w[1]) * 0.5;
                xs.extend([
                    w[0],
                    mid,
                    f32::from_bits(mid.to_bits() + 1),
                    f32::from_bits(mid.to_bits() - 1),
                ]);
            }
            let expected: Vec<i64> = xs.iter().map(|&x| quantize_2d(&code, signed, x)).collect();
            let map = DynamicMap::<B>::new(signed, &device);
            let n = xs.len();
            let got = map.nearest(Tensor::from_data(TensorData::new(xs, [n]), &device));
            let got: Vec<i64> = got.into_data().convert::<i64>().into_vec().unwrap();
            assert_eq!(got, expected, "signed = {signed}");
        }
    }

    #[test]
    fn quantize_keeps_the_state_sign_like_the_kernel() {
        let device = Default::default();
        let map = DynamicMap::<B>::new(true, &device);
        // Block 0: a tiny negative (rounds to +0, moved to the largest negative code 126) and
        // -0.0 (same); block 1: all +0.0, absmax 0 → NaN → code 0, moved down and wrapped to 255.
        let mut values = vec![0.0f32; 2 * BLOCK];
        values[0] = 1.0;
        values[1] = -1e-9;
        values[2] = -0.0;
        let t = Tensor::<B, 2>::from_data(TensorData::new(values, [2, BLOCK]), &device);
        let (codes, absmax) = map.quantize(t);
        let codes: Vec<i64> = codes.into_data().convert::<i64>().into_vec().unwrap();
        assert_eq!(&codes[..4], &[255, 126, 126, 127]);
        assert!(codes[BLOCK..].iter().all(|&c| c == 255));
        assert_eq!(absmax.into_data().into_vec::<f32>().unwrap(), vec![1.0, 0.0]);
    }
}
