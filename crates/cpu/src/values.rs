//! A tensor's f32 values, read where burn's ndarray backend keeps them.

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::{DType, Tensor};

use crate::error::{CpuError, Result};

/// The values of an f32 tensor in row-major order. A contiguous tensor (every loaded weight) is
/// held by reference, its storage shared with the model, so nothing is copied; any other layout
/// is copied once, here.
pub(crate) struct Values {
    held: Held,
    len: usize,
}

enum Held {
    InPlace(NdArrayTensor),
    Copied(Vec<f32>),
}

impl Values {
    /// `tensor`'s values; `name` says which weight in errors.
    pub fn of<const D: usize>(tensor: Tensor<NdArray, D>, name: &str) -> Result<Self> {
        if tensor.dtype() != DType::F32 {
            return Err(CpuError::Weight {
                name: name.into(),
                message: format!("it is {:?}; the CPU decoder reads f32", tensor.dtype()),
            });
        }
        let len = tensor.shape().num_elements();
        let primitive = tensor.clone().into_primitive().tensor();
        let held = match contiguous(&primitive) {
            Some(_) => Held::InPlace(primitive),
            None => Held::Copied(tensor.into_data().into_vec::<f32>().map_err(|e| CpuError::Weight {
                name: name.into(),
                message: format!("{e:?}"),
            })?),
        };
        Ok(Self { held, len })
    }

    pub fn get(&self) -> &[f32] {
        let values = match &self.held {
            Held::InPlace(tensor) => contiguous(tensor).expect("checked when held"),
            Held::Copied(values) => values,
        };
        debug_assert_eq!(values.len(), self.len);
        values
    }
}

/// An f32 tensor's storage as one row-major slice, if it is laid out so.
fn contiguous(tensor: &NdArrayTensor) -> Option<&[f32]> {
    match tensor {
        NdArrayTensor::F32(storage) => storage.view().to_slice(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn a_contiguous_tensor_is_read_where_burn_keeps_it() {
        let t = Tensor::<NdArray, 2>::random([3, 5], Distribution::Default, &Default::default());
        let (a, b) = (Values::of(t.clone(), "t").unwrap(), Values::of(t.clone(), "t").unwrap());
        assert_eq!(a.get().as_ptr(), b.get().as_ptr());
        assert_eq!(a.get(), t.into_data().into_vec::<f32>().unwrap());
    }

    #[test]
    fn another_layout_is_copied_in_row_major_order() {
        let t = Tensor::<NdArray, 2>::random([3, 5], Distribution::Default, &Default::default()).transpose();
        let values = Values::of(t.clone(), "t").unwrap();
        assert_eq!(values.get(), t.into_data().into_vec::<f32>().unwrap());
    }
}
