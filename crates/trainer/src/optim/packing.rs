//! Many small tensors as one: on a GPU each tensor op is a kernel launch, and an adapter has
//! hundreds of tensors, so optimizers update them packed into one buffer.

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

/// Where each named tensor lives in a packed buffer: in order, each starting at a multiple
/// of `align` (block-wise states never share a block between tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub names: Vec<String>,
    pub lens: Vec<usize>,
    pub offsets: Vec<usize>,
    pub total: usize,
}

impl Layout {
    pub fn new(items: impl IntoIterator<Item = (String, usize)>, align: usize) -> Self {
        let (mut names, mut lens, mut offsets, mut total) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for (name, len) in items {
            names.push(name);
            lens.push(len);
            offsets.push(total);
            total += len.next_multiple_of(align);
        }
        Self {
            names,
            lens,
            offsets,
            total,
        }
    }

    /// One buffer holding `tensors` at their offsets and `fill` elsewhere.
    pub fn pack<B: Backend>(&self, tensors: Vec<Tensor<B, 1>>, fill: f32, device: &B::Device) -> Tensor<B, 1> {
        let dtype = tensors.first().map(|t| t.dtype());
        let mut out = Tensor::<B, 1>::full([self.total], fill, device);
        if let Some(dtype) = dtype {
            out = out.cast(dtype);
        }
        for (tensor, &offset) in tensors.into_iter().zip(&self.offsets) {
            let len = tensor.dims()[0];
            out = out.slice_assign(offset..offset + len, tensor);
        }
        out
    }

    /// [`Layout::pack`] for integer tensors.
    pub fn pack_int<B: Backend>(
        &self,
        tensors: Vec<Tensor<B, 1, Int>>,
        fill: i64,
        device: &B::Device,
    ) -> Tensor<B, 1, Int> {
        let mut out = Tensor::<B, 1, Int>::full([self.total], fill, device);
        if let Some(first) = tensors.first() {
            out = out.cast(first.dtype());
        }
        for (tensor, &offset) in tensors.into_iter().zip(&self.offsets) {
            let len = tensor.dims()[0];
            out = out.slice_assign(offset..offset + len, tensor);
        }
        out
    }

    /// The tensors of a packed buffer, in order (views, no copies).
    pub fn unpack<B: Backend, K>(&self, packed: Tensor<B, 1, K>) -> Vec<Tensor<B, 1, K>>
    where
        K: burn::tensor::BasicOps<B>,
    {
        self.offsets
            .iter()
            .zip(&self.lens)
            .map(|(&offset, &len)| packed.clone().slice(offset..offset + len))
            .collect()
    }

    /// `true` where a packed buffer holds no tensor's value.
    pub fn padding<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1, Bool> {
        let mut mask = vec![true; self.total];
        for (&offset, &len) in self.offsets.iter().zip(&self.lens) {
            mask[offset..offset + len].fill(false);
        }
        Tensor::from_data(TensorData::new(mask, [self.total]), device)
    }
}
