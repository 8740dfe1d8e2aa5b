use std::collections::BTreeMap;

use burn::tensor::{Bool, DType, Int, IntDType, Tensor, TensorData, backend::Backend, get_device_settings};

use super::packing::Layout;
use super::quant::{BLOCK, DynamicMap};
use super::{AdamWConfig, Optimizer, StateMap, StateTensors, scaled};

/// Tensors with fewer elements keep f32 moments (bnb's `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// bitsandbytes' `AdamW8bit` (0.50.2, its CUDA kernels): about 2 bytes of state per parameter.
///
/// Both moments are stored as 8-bit codes into bnb's dynamic maps (signed for the first moment,
/// unsigned for the second) with one f32 absmax per block of 256 values; tensors under 4096
/// elements keep f32 moments, as bnb does. One step is bnb's `kOptimizerStatic8bit2StateBlockwise`
/// in burn tensor ops: dequantize, update, requantize. In order:
///
/// - `m = m·β1 + (1-β1)·g`, `v = v·β2 + ((1-β2)·g)·g` (f32 path: `(1-β2)·(g·g)`);
/// - `p += -lr·c2/c1 · m / (sqrt(v) + c2·eps)` with `c1 = 1-β1^t`, `c2 = sqrt(1-β2^t)`: eps is
///   scaled by `c2`, which is PyTorch's `m̂ / (sqrt(v̂) + eps)` rearranged;
/// - then the decoupled weight decay, `p *= 1 - lr·wd` (after the update, unlike PyTorch);
/// - non-finite gradient entries (8-bit path only) zero that element's moments and leave its
///   parameter untouched;
/// - every hyper-parameter is rounded to f32 first, as bnb passes them to the kernel.
///
/// Codes are `u8` where the backend supports it in general (ndarray, CUDA, Vulkan with int8
/// shaders); WGSL has no 8-bit integers, and there the backend's default int type holds them.
/// Checkpoints always hold `u8` codes under bnb's state names (`state1`, `state2`, `absmax1`,
/// `absmax2`, `step`).
pub struct AdamW8bit<B: Backend> {
    config: AdamWConfig,
    /// The signed map for the first moment, the unsigned one for the second.
    maps: Option<(DynamicMap<B>, DynamicMap<B>)>,
    states: BTreeMap<String, Entry<B>>,
    /// The 8-bit states of the tensors [`Optimizer::update_many`] last updated, packed; they
    /// are not in `states` meanwhile.
    packed: Option<Packed<B>>,
}

/// Block-wise states of several tensors in one buffer each, every tensor starting on a block
/// boundary, so that one pass of kernels updates them all.
struct Packed<B: Backend> {
    layout: Layout,
    /// Shared: tensors are packed only when their steps agree.
    step: u64,
    codes1: Tensor<B, 1, Int>,
    codes2: Tensor<B, 1, Int>,
    absmax1: Tensor<B, 1>,
    absmax2: Tensor<B, 1>,
    /// The slots past each tensor's end. bnb never writes them, so their codes go back to
    /// 128 and 0 after each step: the values a partial block's missing entries load as.
    padding: Tensor<B, 1, Bool>,
}

#[derive(Clone)]
struct Entry<B: Backend> {
    step: u64,
    moments: Moments<B>,
}

#[derive(Clone)]
enum Moments<B: Backend> {
    /// bnb's 32-bit path.
    Full { state1: Tensor<B, 1>, state2: Tensor<B, 1> },
    /// Codes of all `n` values and one absmax per (last possibly partial) block.
    Blockwise {
        codes1: Tensor<B, 1, Int>,
        codes2: Tensor<B, 1, Int>,
        absmax1: Tensor<B, 1>,
        absmax2: Tensor<B, 1>,
    },
}

/// The kernel's scalars for one step, in f32 as the kernel computes them.
#[derive(Debug, Clone, Copy)]
pub struct Scalars {
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// `c2 · eps`
    pub eps: f32,
    /// `-lr · c2 / c1`
    pub step_size: f32,
    /// `1 - lr·wd`, when `wd > 0`
    pub decay: Option<f32>,
}

/// One step of bnb's block-wise kernel over packed tensors, for a [`BlockwiseAdamKernel`].
pub struct BlockwiseStep<'a, B: Backend> {
    pub scalars: Scalars,
    /// The tensors (f32, flattened) and where each starts in the packed state (multiples of
    /// [`super::BLOCK`]); the state's slots past a tensor's end load gradient 0 and codes 128
    /// (first moment) and 0 (second) and hold those codes again after the step.
    pub params: &'a [Tensor<B, 1>],
    pub grads: &'a [Tensor<B, 1>],
    pub offsets: &'a [usize],
    /// Gradients are multiplied by this first when it is below 1.
    pub grad_scale: f32,
    /// `u8` codes `[total]` and f32 absmax `[total / 256]` of the first and second moment.
    pub codes: [Tensor<B, 1, Int>; 2],
    pub absmax: [Tensor<B, 1>; 2],
}

/// New parameters packed `[total]`, codes and absmax.
pub type BlockwiseResult<B> = (Tensor<B, 1>, [Tensor<B, 1, Int>; 2], [Tensor<B, 1>; 2]);

/// A backend's fused form of [`AdamW8bit`]'s packed step (one kernel instead of dozens of
/// tensor ops, and no packing copies), bit for bit what the burn ops compute.
pub trait BlockwiseAdamKernel<B: Backend> {
    fn step(&self, step: BlockwiseStep<'_, B>) -> Result<BlockwiseResult<B>, String>;
}

impl Scalars {
    fn new(config: &AdamWConfig, step: u64, lr: f64) -> Self {
        let (beta1, beta2, lr) = (config.beta1 as f32, config.beta2 as f32, lr as f32);
        let weight_decay = config.weight_decay as f32;
        // The kernel's `__powf`, correctly rounded here.
        let pow = |beta: f32| (beta as f64).powf(step as f64) as f32;
        let correction1 = 1.0 - pow(beta1);
        let correction2 = (1.0 - pow(beta2)).sqrt();
        Self {
            beta1,
            beta2,
            one_minus_beta1: 1.0 - beta1,
            one_minus_beta2: 1.0 - beta2,
            eps: correction2 * config.eps as f32,
            step_size: -lr * correction2 / correction1,
            decay: (weight_decay > 0.0).then_some(1.0 - lr * weight_decay),
        }
    }
}

impl<B: Backend> AdamW8bit<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            maps: None,
            states: BTreeMap::new(),
            packed: None,
        }
    }
}

impl<B: Backend> AdamW8bit<B> {
    /// Makes `packed` hold exactly the tensors of `layout`, taking their states from `states`
    /// (zeros for new tensors). Returns false, changing nothing, when their steps differ.
    fn pack(&mut self, layout: &Layout, device: &B::Device) -> bool {
        if self.packed.as_ref().is_some_and(|p| &p.layout == layout) {
            return true;
        }
        self.unpack();
        let mut steps = layout.names.iter().map(|n| self.states.get(n).map_or(0, |e| e.step));
        let step = steps.next().unwrap_or(0);
        if steps.any(|other| other != step) {
            return false;
        }
        let (mut codes1, mut codes2, mut absmax1, mut absmax2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, &n) in layout.names.iter().zip(&layout.lens) {
            let entry = self.states.remove(name).unwrap_or_else(|| Entry {
                step: 0,
                moments: Moments::zeros(n, device),
            });
            let Moments::Blockwise {
                codes1: c1,
                codes2: c2,
                absmax1: a1,
                absmax2: a2,
            } = entry.moments
            else {
                unreachable!("tensors of {MIN_8BIT_SIZE} elements or more have block-wise state")
            };
            codes1.push(c1);
            codes2.push(c2);
            absmax1.push(a1);
            absmax2.push(a2);
        }
        let blocks = Layout::new(
            layout
                .names
                .iter()
                .cloned()
                .zip(layout.lens.iter().map(|n| n.div_ceil(BLOCK))),
            1,
        );
        self.packed = Some(Packed {
            layout: layout.clone(),
            step,
            codes1: layout.pack_int(codes1, 128, device),
            codes2: layout.pack_int(codes2, 0, device),
            absmax1: blocks.pack(absmax1, 0.0, device),
            absmax2: blocks.pack(absmax2, 0.0, device),
            padding: layout.padding(device),
        });
        true
    }

    /// Moves packed states back to per-tensor ones.
    fn unpack(&mut self) {
        if let Some(p) = self.packed.take() {
            self.states.extend(p.layout.names.iter().cloned().zip(p.entries()));
        }
    }
}

impl<B: Backend> Packed<B> {
    /// Each tensor's state, as views into the packed buffers.
    fn entries(&self) -> Vec<Entry<B>> {
        let blocks = Layout::new(
            self.layout
                .names
                .iter()
                .cloned()
                .zip(self.layout.lens.iter().map(|n| n.div_ceil(BLOCK))),
            1,
        );
        let codes1 = self.layout.unpack(self.codes1.clone());
        let codes2 = self.layout.unpack(self.codes2.clone());
        let absmax1 = blocks.unpack(self.absmax1.clone());
        let absmax2 = blocks.unpack(self.absmax2.clone());
        codes1
            .into_iter()
            .zip(codes2)
            .zip(absmax1.into_iter().zip(absmax2))
            .map(|((codes1, codes2), (absmax1, absmax2))| Entry {
                step: self.step,
                moments: Moments::Blockwise {
                    codes1,
                    codes2,
                    absmax1,
                    absmax2,
                },
            })
            .collect()
    }
}

/// bnb's block-wise kernel on `[blocks, 256]` values: dequantize both moments (codes padded
/// to whole blocks, one absmax per block), update, requantize. Returns the new parameters,
/// codes (the backend's default int dtype) and absmax.
#[allow(clippy::type_complexity)]
fn blockwise_step<B: Backend>(
    (map1, map2): &(DynamicMap<B>, DynamicMap<B>),
    s: &Scalars,
    grad: Tensor<B, 2>,
    old: Tensor<B, 2>,
    [codes1, codes2]: [Tensor<B, 1, Int>; 2],
    [absmax1, absmax2]: [Tensor<B, 1>; 2],
) -> (
    Tensor<B, 2>,
    Tensor<B, 1, Int>,
    Tensor<B, 1, Int>,
    Tensor<B, 1>,
    Tensor<B, 1>,
) {
    let m = map1.dequantize(codes1, absmax1);
    let v = map2.dequantize(codes2, absmax2);
    let skip = grad.clone().is_finite().bool_not();
    let v = (v * s.beta2 + grad.clone() * s.one_minus_beta2 * grad.clone()).mask_fill(skip.clone(), 0.0);
    let m = (m * s.beta1 + grad * s.one_minus_beta1).mask_fill(skip.clone(), 0.0);
    let mut new = old.clone() + m.clone() / (v.clone().sqrt() + s.eps) * s.step_size;
    if let Some(decay) = s.decay {
        new = new * decay;
    }
    let new = new.mask_where(skip, old);
    let (c1, a1) = map1.quantize(m);
    let (c2, a2) = map2.quantize(v);
    (new, c1, c2, a1, a2)
}

/// Where the backend has general 8-bit integers, codes take one byte.
fn code_dtype<B: Backend>(device: &B::Device) -> IntDType {
    if B::supports_dtype(device, DType::U8) {
        IntDType::U8
    } else {
        get_device_settings::<B>(device).int_dtype
    }
}

/// Codes as the backend's default int type, for gathers and arithmetic.
fn compute_codes<B: Backend>(codes: Tensor<B, 1, Int>) -> Tensor<B, 1, Int> {
    let dtype = get_device_settings::<B>(&codes.device()).int_dtype;
    codes.cast(dtype)
}

/// `tensor` followed by `pad` copies of `value`, `tensor` itself when `pad` is 0.
fn pad_int<B: Backend>(tensor: Tensor<B, 1, Int>, pad: usize, value: i64) -> Tensor<B, 1, Int> {
    if pad == 0 {
        return tensor;
    }
    let fill = Tensor::<B, 1, Int>::full([pad], value, &tensor.device()).cast(tensor.dtype());
    Tensor::cat(vec![tensor, fill], 0)
}

fn pad_float<B: Backend>(tensor: Tensor<B, 1>, pad: usize) -> Tensor<B, 1> {
    if pad == 0 {
        return tensor;
    }
    let fill = Tensor::zeros([pad], (&tensor.device(), tensor.dtype()));
    Tensor::cat(vec![tensor, fill], 0)
}

impl<B: Backend> Optimizer<B> for AdamW8bit<B> {
    fn update(&mut self, name: &str, param: Tensor<B, 1>, grad: Tensor<B, 1>, lr: f64) -> Tensor<B, 1> {
        if self
            .packed
            .as_ref()
            .is_some_and(|p| p.layout.names.iter().any(|n| n == name))
        {
            self.unpack();
        }
        let n = param.dims()[0];
        let device = param.device();
        let entry = self.states.entry(name.to_string()).or_insert_with(|| Entry {
            step: 0,
            moments: Moments::zeros(n, &device),
        });
        assert_eq!(
            entry.moments.len(),
            n,
            "optimizer state of `{name}` is for another tensor size"
        );
        entry.step += 1;
        let s = Scalars::new(&self.config, entry.step, lr);
        match &mut entry.moments {
            Moments::Full { state1, state2 } => {
                *state1 = state1.clone() * s.beta1 + grad.clone() * s.one_minus_beta1;
                *state2 = state2.clone() * s.beta2 + grad.clone() * grad * s.one_minus_beta2;
                let param = param + state1.clone() / (state2.clone().sqrt() + s.eps) * s.step_size;
                match s.decay {
                    Some(decay) => param * decay,
                    None => param,
                }
            }
            Moments::Blockwise {
                codes1,
                codes2,
                absmax1,
                absmax2,
            } => {
                let maps = self
                    .maps
                    .get_or_insert_with(|| (DynamicMap::new(true, &device), DynamicMap::new(false, &device)));
                let blocks = n.div_ceil(BLOCK);
                let pad = blocks * BLOCK - n;
                // The kernel loads a partial last block's missing entries as gradient 0 and codes
                // 128 (state1) and 0 (state2); they count towards that block's absmax.
                let dtype = codes1.dtype();
                let (new, c1, c2, a1, a2) = blockwise_step(
                    maps,
                    &s,
                    pad_float(grad, pad).reshape([blocks, BLOCK]),
                    pad_float(param, pad).reshape([blocks, BLOCK]),
                    [
                        pad_int(compute_codes(codes1.clone()), pad, 128),
                        pad_int(compute_codes(codes2.clone()), pad, 0),
                    ],
                    [absmax1.clone(), absmax2.clone()],
                );
                *codes1 = c1.slice(0..n).cast(dtype);
                *codes2 = c2.slice(0..n).cast(dtype);
                *absmax1 = a1;
                *absmax2 = a2;
                new.reshape([blocks * BLOCK]).slice(0..n)
            }
        }
    }

    fn update_many(
        &mut self,
        items: Vec<(String, Tensor<B, 1>, Tensor<B, 1>)>,
        lr: f64,
        grad_scale: f64,
        kernel: Option<&dyn BlockwiseAdamKernel<B>>,
    ) -> Vec<Tensor<B, 1>> {
        let Some(device) = items.first().map(|(_, param, _)| param.device()) else {
            return Vec::new();
        };
        let layout = Layout::new(
            items
                .iter()
                .filter(|(_, param, _)| param.dims()[0] >= MIN_8BIT_SIZE)
                .map(|(name, param, _)| (name.clone(), param.dims()[0])),
            BLOCK,
        );
        if layout.names.len() < 2 || !self.pack(&layout, &device) {
            return items
                .into_iter()
                .map(|(name, param, grad)| self.update(&name, param, scaled(grad, grad_scale), lr))
                .collect();
        }
        let mut packed_params = Vec::new();
        let mut packed_grads = Vec::new();
        let mut out: Vec<Option<Tensor<B, 1>>> = Vec::with_capacity(items.len());
        for (name, param, grad) in items {
            if param.dims()[0] >= MIN_8BIT_SIZE {
                packed_params.push(param);
                packed_grads.push(grad);
                out.push(None);
            } else {
                out.push(Some(self.update(&name, param, scaled(grad, grad_scale), lr)));
            }
        }
        let maps = self
            .maps
            .get_or_insert_with(|| (DynamicMap::new(true, &device), DynamicMap::new(false, &device)));
        let p = self.packed.as_mut().expect("packed above");
        let s = Scalars::new(&self.config, p.step + 1, lr);
        let fused = kernel.and_then(|kernel| {
            let step = BlockwiseStep {
                scalars: s,
                params: &packed_params,
                grads: &packed_grads,
                offsets: &layout.offsets,
                grad_scale: grad_scale as f32,
                codes: [p.codes1.clone(), p.codes2.clone()],
                absmax: [p.absmax1.clone(), p.absmax2.clone()],
            };
            kernel
                .step(step)
                .map_err(|e| tracing::warn!("the fused 8-bit AdamW step failed ({e}); using tensor ops"))
                .ok()
        });
        p.step += 1;
        let new = match fused {
            Some((new, [c1, c2], [a1, a2])) => {
                (p.codes1, p.codes2, p.absmax1, p.absmax2) = (c1, c2, a1, a2);
                new
            }
            None => {
                let blocks = layout.total / BLOCK;
                let dtype = p.codes1.dtype();
                let grads = scaled(layout.pack(packed_grads, 0.0, &device), grad_scale);
                let (new, c1, c2, a1, a2) = blockwise_step(
                    maps,
                    &s,
                    grads.reshape([blocks, BLOCK]),
                    layout.pack(packed_params, 0.0, &device).reshape([blocks, BLOCK]),
                    [compute_codes(p.codes1.clone()), compute_codes(p.codes2.clone())],
                    [p.absmax1.clone(), p.absmax2.clone()],
                );
                p.codes1 = c1.mask_fill(p.padding.clone(), 128).cast(dtype);
                p.codes2 = c2.mask_fill(p.padding.clone(), 0).cast(dtype);
                p.absmax1 = a1;
                p.absmax2 = a2;
                new.reshape([layout.total])
            }
        };
        let mut updated = layout.unpack(new).into_iter();
        out.into_iter()
            .map(|slot| slot.unwrap_or_else(|| updated.next().expect("one update per packed tensor")))
            .collect()
    }

    fn state(&self) -> StateTensors {
        // Sorted by name whether packed or not, so checkpoints do not depend on it.
        let mut entries: BTreeMap<&str, Entry<B>> = self.states.iter().map(|(n, e)| (n.as_str(), e.clone())).collect();
        if let Some(p) = &self.packed {
            entries.extend(p.layout.names.iter().map(String::as_str).zip(p.entries()));
        }
        let mut out = Vec::new();
        for (name, entry) in entries {
            out.push((format!("{name}.step"), TensorData::new(vec![entry.step as i64], [1])));
            match &entry.moments {
                Moments::Full { state1, state2 } => {
                    out.push((format!("{name}.state1"), state1.to_data()));
                    out.push((format!("{name}.state2"), state2.to_data()));
                }
                Moments::Blockwise {
                    codes1,
                    codes2,
                    absmax1,
                    absmax2,
                } => {
                    out.push((format!("{name}.state1"), codes1.to_data().convert::<u8>()));
                    out.push((format!("{name}.state2"), codes2.to_data().convert::<u8>()));
                    out.push((format!("{name}.absmax1"), absmax1.to_data()));
                    out.push((format!("{name}.absmax2"), absmax2.to_data()));
                }
            }
        }
        out
    }

    fn load_state(&mut self, state: StateTensors, device: &B::Device) -> Result<(), String> {
        let mut map = StateMap::new(state);
        let mut states = BTreeMap::new();
        for name in map.names() {
            let step = map.take_step(&name)?;
            let mut take = |suffix: &str| map.take(&name, suffix);
            let state1 = take("state1")?;
            let state2 = take("state2")?;
            let moments = match state1.1.dtype {
                DType::U8 => {
                    let absmax1 = take("absmax1")?;
                    let absmax2 = take("absmax2")?;
                    Moments::blockwise_from_data(state1, state2, absmax1, absmax2, device)?
                }
                _ => Moments::full_from_data(state1, state2, device)?,
            };
            states.insert(name, Entry { step, moments });
        }
        map.finish()?;
        self.states = states;
        self.packed = None;
        Ok(())
    }

    fn state_sizes(&self) -> BTreeMap<String, usize> {
        let mut sizes: BTreeMap<String, usize> = self
            .states
            .iter()
            .map(|(name, entry)| (name.clone(), entry.moments.len()))
            .collect();
        if let Some(p) = &self.packed {
            sizes.extend(p.layout.names.iter().cloned().zip(p.layout.lens.iter().copied()));
        }
        sizes
    }

    fn state_bytes(&self) -> usize {
        let bytes = |t: &Tensor<B, 1, Int>| t.dims()[0] * t.dtype().size();
        let packed = self
            .packed
            .as_ref()
            .map_or(0, |p| bytes(&p.codes1) + bytes(&p.codes2) + 8 * p.absmax1.dims()[0]);
        packed
            + self
                .states
                .values()
                .map(|entry| match &entry.moments {
                    Moments::Full { state1, .. } => 8 * state1.dims()[0],
                    Moments::Blockwise {
                        codes1,
                        codes2,
                        absmax1,
                        ..
                    } => bytes(codes1) + bytes(codes2) + 8 * absmax1.dims()[0],
                })
                .sum::<usize>()
    }
}

type Keyed = (String, TensorData);

impl<B: Backend> Moments<B> {
    /// bnb's initial state: f32 zeros, or all codes 0 with absmax 0.
    fn zeros(n: usize, device: &B::Device) -> Self {
        let zeros = |len: usize| Tensor::<B, 1>::zeros([len], (device, DType::F32));
        if n < MIN_8BIT_SIZE {
            return Self::Full {
                state1: zeros(n),
                state2: zeros(n),
            };
        }
        let codes = || Tensor::<B, 1, Int>::zeros([n], device).cast(code_dtype::<B>(device));
        Self::Blockwise {
            codes1: codes(),
            codes2: codes(),
            absmax1: zeros(n.div_ceil(BLOCK)),
            absmax2: zeros(n.div_ceil(BLOCK)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Full { state1, .. } => state1.dims()[0],
            Self::Blockwise { codes1, .. } => codes1.dims()[0],
        }
    }

    fn full_from_data(state1: Keyed, state2: Keyed, device: &B::Device) -> Result<Self, String> {
        let key1 = state1.0.clone();
        let state1 = f32_vector(state1, None)?;
        let n = state1.num_elements();
        if n >= MIN_8BIT_SIZE {
            return Err(format!(
                "`{key1}`: f32 optimizer state for a tensor of {n} elements; AdamW8bit keeps 8-bit state from {MIN_8BIT_SIZE}"
            ));
        }
        let state2 = f32_vector(state2, Some(n))?;
        let tensor = |data: TensorData| Tensor::from_data(data, (device, DType::F32));
        Ok(Self::Full {
            state1: tensor(state1),
            state2: tensor(state2),
        })
    }

    fn blockwise_from_data(
        (key1, codes1): Keyed,
        (key2, codes2): Keyed,
        absmax1: Keyed,
        absmax2: Keyed,
        device: &B::Device,
    ) -> Result<Self, String> {
        let n = codes1.num_elements();
        if n < MIN_8BIT_SIZE {
            return Err(format!(
                "`{key1}`: 8-bit optimizer state for a tensor of {n} elements; AdamW8bit keeps f32 state under {MIN_8BIT_SIZE}"
            ));
        }
        if codes2.dtype != DType::U8 || codes2.num_elements() != n {
            return Err(format!("`{key2}` must be {n} u8 codes like `{key1}`"));
        }
        let blocks = n.div_ceil(BLOCK);
        let absmax = |data: Keyed| -> Result<Tensor<B, 1>, String> {
            let key = data.0.clone();
            let data = f32_vector(data, Some(blocks))?;
            let values = data.as_slice::<f32>().map_err(|e| format!("`{key}`: {e:?}"))?;
            if !values.iter().all(|v| v.is_finite() && *v >= 0.0) {
                return Err(format!("`{key}` must be finite and non-negative"));
            }
            Ok(Tensor::from_data(data, (device, DType::F32)))
        };
        let dtype = code_dtype::<B>(device);
        let codes = |key: &str, data: TensorData| -> Result<Tensor<B, 1, Int>, String> {
            let data = TensorData::new(data.into_vec::<u8>().map_err(|e| format!("`{key}`: {e:?}"))?, [n]);
            Ok(Tensor::from_data(
                data.convert_dtype(dtype.into()),
                (device, dtype.into()),
            ))
        };
        Ok(Self::Blockwise {
            codes1: codes(&key1, codes1)?,
            codes2: codes(&key2, codes2)?,
            absmax1: absmax(absmax1)?,
            absmax2: absmax(absmax2)?,
        })
    }
}

/// `data` as a flat f32 vector, of length `len` when given.
fn f32_vector((key, data): Keyed, len: Option<usize>) -> Result<TensorData, String> {
    if data.dtype != DType::F32 {
        return Err(format!("`{key}` must be f32, not {:?}", data.dtype));
    }
    let n = data.num_elements();
    if len.is_some_and(|len| len != n) {
        return Err(format!("`{key}` has {n} values, expected {}", len.unwrap_or(0)));
    }
    Ok(TensorData::new(
        data.into_vec::<f32>().map_err(|e| format!("`{key}`: {e:?}"))?,
        [n],
    ))
}
