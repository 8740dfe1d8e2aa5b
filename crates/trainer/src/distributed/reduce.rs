//! What a step sums across ranks: the adapter gradients (one f32 message, in PEFT key order)
//! and the summed token loss (f64, as a single process adds it).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::Collective;
use crate::error::Result;
use crate::grads::AdapterGrads;

/// Replaces this rank's gradients and loss sum by those of all ranks. Every rank has the same
/// adapter, so the same keys in the same order; a rank whose differ is caught by the length.
pub(crate) fn sum_step<B: Backend>(
    collective: &mut dyn Collective,
    grads: &mut AdapterGrads<B>,
    loss_sum: &mut f64,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut loss = [*loss_sum];
    collective.sum_f64(&mut loss)?;
    *loss_sum = loss[0];
    let Some(first) = grads.values().next() else {
        return Ok(());
    };
    let (device, dtype) = (first.device(), first.dtype());
    let shapes: Vec<(String, [usize; 2])> = grads.iter().map(|(key, g)| (key.clone(), g.dims())).collect();
    let flat = Tensor::cat(grads.values().map(|g| g.clone().reshape([-1])).collect(), 0);
    let mut values: Vec<f32> = flat.into_data().convert::<f32>().into_vec().expect("converted to f32");
    collective.sum_f32(&mut values)?;
    let len = values.len();
    let total = Tensor::<B, 1>::from_data(TensorData::new(values, [len]), &device).cast(dtype);
    let mut offset = 0;
    for (key, [rows, cols]) in shapes {
        let size = rows * cols;
        grads.insert(key, total.clone().slice(offset..offset + size).reshape([rows, cols]));
        offset += size;
    }
    Ok(())
}

/// Whether any rank raised its `flag` (a stop request): all ranks then act on it together.
pub(crate) fn sum_flag(collective: &mut dyn Collective, flag: bool) -> Result<bool> {
    if collective.world_size() == 1 {
        return Ok(flag);
    }
    let mut count = [f64::from(u8::from(flag))];
    collective.sum_f64(&mut count)?;
    Ok(count[0] > 0.0)
}
