//! The optimizer step on Ember's kernels (kernels/optimizer.cu): the gradients' global norm and
//! bitsandbytes' block-wise 8-bit AdamW over every adapter tensor, one launch each, where the
//! reference (`ember_trainer`'s norm and `AdamW8bit` in burn ops) takes several operations per
//! tensor — hundreds of launches a step, which cost more than the arithmetic.

use burn::tensor::DType;
use ember_trainer::grads::AdapterGrads;
use ember_trainer::optim::{BLOCK, BlockwiseResult, BlockwiseStep, dynamic_map};

use crate::bridge::{CudaBackend, Holds, empty, empty_int, wait_for_burn};
use crate::error::{CudaError, Result};
use crate::ops::{AdamStep, Cuda};

/// `sqrt(Σ ‖g‖²)`: per-tensor sums in f32 on the device, added in f64 on the host in the
/// gradients' order, as the reference does.
pub fn global_norm(cuda: &mut Cuda, grads: &AdapterGrads<CudaBackend>) -> Result<f64> {
    let Some(first) = grads.values().next() else {
        return Ok(0.0);
    };
    let mut holds = Holds::default();
    for grad in grads.values() {
        f32_only(grad.dtype())?;
        holds.add(grad);
    }
    let held = holds.hold()?;
    let table: Vec<u64> = grads
        .values()
        .zip(&held)
        .flat_map(|(grad, h)| [h.ptr, grad.shape().num_elements() as u64])
        .collect();
    let n = grads.len();
    let base = cuda.staging(table.len() * 8 + n * 4)?;
    let sums_ptr = base + (table.len() * 8) as u64;
    wait_for_burn(&first.device())?;
    cuda.gpu.upload(base, &table)?;
    cuda.sum_squares(base, n, sums_ptr)?;
    let mut sums = vec![0f32; n];
    cuda.gpu.download(&mut sums, sums_ptr)?;
    cuda.finish()?;
    drop(held);
    Ok(sums.iter().map(|&s| s as f64).sum::<f64>().sqrt())
}

/// One packed 8-bit AdamW step (see `ember_trainer::optim::BlockwiseAdamKernel`).
pub fn adamw8bit(cuda: &mut Cuda, step: BlockwiseStep<'_, CudaBackend>) -> Result<BlockwiseResult<CudaBackend>> {
    let [codes1, codes2] = &step.codes;
    let [absmax1, absmax2] = &step.absmax;
    let total = codes1.dims()[0];
    let blocks = total / BLOCK;
    if codes1.dtype() != DType::U8 || codes2.dtype() != DType::U8 {
        return Err(CudaError::Unsupported(format!(
            "8-bit codes held as {:?}",
            codes1.dtype()
        )));
    }
    let device = codes1.device();
    let new = empty(&device, [total], DType::F32);
    let new_codes = [0, 1].map(|_| empty_int(&device, [total], DType::U8));
    let new_absmax = [0, 1].map(|_| empty(&device, [blocks], DType::F32));

    let mut holds = Holds::default();
    let new_at = holds.add(&new);
    let mut tensors = Vec::with_capacity(step.params.len());
    for (param, grad) in step.params.iter().zip(step.grads) {
        f32_only(param.dtype())?;
        f32_only(grad.dtype())?;
        tensors.push((holds.add(param), holds.add(grad), param.dims()[0]));
    }
    let codes_at = [holds.add_int(codes1), holds.add_int(codes2)];
    let absmax_at = [holds.add(absmax1), holds.add(absmax2)];
    let new_codes_at = [holds.add_int(&new_codes[0]), holds.add_int(&new_codes[1])];
    let new_absmax_at = [holds.add(&new_absmax[0]), holds.add(&new_absmax[1])];
    let held = holds.hold()?;
    let ptr = |i: usize| held[i].ptr;
    let new_ptr = ptr(new_at);
    let table: Vec<u64> = tensors
        .iter()
        .zip(step.offsets)
        .flat_map(|(&(p, g, len), &offset)| [ptr(p), ptr(g), new_ptr + (offset * 4) as u64, len as u64, offset as u64])
        .collect();
    let codes = codes_at.map(ptr);
    let absmax = absmax_at.map(ptr);
    let new_codes_ptr = new_codes_at.map(ptr);
    let new_absmax_ptr = new_absmax_at.map(ptr);

    let maps: Vec<f32> = dynamic_map(true).into_iter().chain(dynamic_map(false)).collect();
    let base = cuda.staging(maps.len() * 4 + table.len() * 8)?;
    let table_ptr = base + (maps.len() * 4) as u64;
    wait_for_burn(&device)?;
    cuda.gpu.upload(base, &maps)?;
    cuda.gpu.upload(table_ptr, &table)?;
    let args = AdamStep {
        table: table_ptr,
        tensors: step.params.len(),
        maps: base,
        codes,
        absmax,
        new_codes: new_codes_ptr,
        new_absmax: new_absmax_ptr,
        scalars: step.scalars,
        grad_scale: step.grad_scale,
    };
    cuda.adamw8bit(blocks, &args)?;
    cuda.finish()?;
    drop(held);
    Ok((new, new_codes, new_absmax))
}

fn f32_only(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 => Ok(()),
        other => Err(CudaError::Unsupported(format!(
            "the fused optimizer takes f32 tensors, not {other:?}"
        ))),
    }
}
