//! The adapters of every layer, packed once per micro-batch in the compute type: each layer's
//! A matrices of projections that share an input lie back to back (`[A_q; A_k; A_v]`,
//! `[A_gate; A_up]`), so one GEMM computes `x·Aᵀ` for the whole group; each B is stored scaled
//! by the adapter's `alpha / r`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_model::{DecoderLayer, GemmaForCausalLM, Linear};

use crate::bridge::{CudaBackend, Holds, wait_for_burn};
use crate::driver::Buffer;
use crate::error::Result;
use crate::gemm::Elem;
use crate::ops::Cuda;

/// Where one projection's adapter lies in the packed buffer: (rank, A's offset, B's offset, scale).
type Place = (usize, usize, usize, f32);

/// Projection indices, in the order `ember_model::LayerGrads` uses.
pub const Q: usize = 0;
pub const K: usize = 1;
pub const V: usize = 2;
pub const O: usize = 3;
pub const GATE: usize = 4;
pub const UP: usize = 5;
pub const DOWN: usize = 6;

/// Projections that read the same input.
pub const GROUPS: [&[usize]; 4] = [&[Q, K, V], &[O], &[GATE, UP], &[DOWN]];

/// One adapter in the pack.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub rank: usize,
    /// `alpha / r` (already applied to the packed B).
    pub scale: f32,
    /// Packed `A` `[rank, in]`.
    pub a: u64,
    /// Packed `scale · B` `[out, rank]`.
    pub b: u64,
}

/// A group's adapters: the concatenated A and each member's columns in `x·Aᵀ`.
pub struct GroupAdapters {
    pub a: u64,
    pub rank: usize,
    /// (projection, first column, rank)
    pub members: Vec<(usize, usize, usize)>,
}

pub struct Adapters {
    buffer: Option<Buffer>,
    pub layers: Vec<[Option<Slot>; 7]>,
}

/// A layer's projections in [`Q`]..[`DOWN`] order. The kernels run Gemma 1 to 3 only
/// (`CudaKernels::unsupported` refuses the others before any layer gets here), whose layers
/// have all seven.
pub fn projections<B: Backend>(layer: &DecoderLayer<B>) -> [&Linear<B>; 7] {
    layer
        .projections()
        .map(|linear| linear.expect("a Gemma 1 to 3 layer has all seven projections"))
}

impl Adapters {
    pub fn new() -> Self {
        Self {
            buffer: None,
            layers: Vec::new(),
        }
    }

    /// Bytes of the packed copies.
    pub fn bytes(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.bytes)
    }

    /// Packs `model`'s adapters in `elem`, reusing the buffer when it is large enough.
    pub fn pack(&mut self, cuda: &mut Cuda, model: &GemmaForCausalLM<CudaBackend>, elem: Elem) -> Result<()> {
        // Offsets (in elements) first; pointers once the buffer exists.
        let mut copies = Copies::default();
        let mut places: Vec<[Option<Place>; 7]> = Vec::new();
        for layer in &model.model.layers {
            let linears = projections(layer);
            let mut place = [None; 7];
            for group in GROUPS {
                copies.end = copies.end.next_multiple_of(128);
                for &p in group {
                    if let Some(lora) = &linears[p].lora {
                        // Members of a group follow each other without a gap.
                        let a = copies.push(&lora.a.val(), 1.0);
                        place[p] = Some((lora.rank(), a, 0, lora.scale as f32));
                    }
                }
            }
            for (p, linear) in linears.iter().enumerate() {
                if let (Some(lora), Some(place)) = (&linear.lora, place[p].as_mut()) {
                    copies.end = copies.end.next_multiple_of(128);
                    place.2 = copies.push(&lora.b.val(), lora.scale as f32);
                }
            }
            places.push(place);
        }
        // The sources may still be written by burn's queue (the optimizer's update).
        let device = model.model.embed_tokens.weight.device();
        wait_for_burn(&device)?;
        let bytes = copies.end.max(1) * elem.size();
        if self.buffer.as_ref().is_none_or(|b| b.bytes < bytes) {
            self.buffer = None;
            self.buffer = Some(Buffer::new(bytes)?);
        }
        let base = self.buffer.as_ref().expect("allocated above").ptr;
        let at = |offset: usize| base + (offset * elem.size()) as u64;
        self.layers = places
            .iter()
            .map(|place| {
                place.map(|p| {
                    p.map(|(rank, a, b, scale)| Slot {
                        rank,
                        scale,
                        a: at(a),
                        b: at(b),
                    })
                })
            })
            .collect();
        if !copies.table.is_empty() {
            let held = copies.sources.hold()?;
            for (row, source) in copies.table.iter_mut().zip(&held) {
                row[0] = source.ptr;
            }
            let table = Buffer::new(copies.table.len() * 32)?;
            cuda.gpu.upload(table.ptr, &copies.table)?;
            cuda.pack(elem, table.ptr, copies.table.len(), base)?;
            cuda.gpu.sync()?;
        }
        Ok(())
    }

    /// The largest total rank of each projection group over the layers (what the scratch's
    /// adapter buffers hold).
    pub fn ranks(&self) -> [usize; 4] {
        let mut ranks = [0usize; 4];
        for layer in 0..self.layers.len() {
            for (g, group) in GROUPS.iter().enumerate() {
                if let Some(a) = self.group(layer, group) {
                    ranks[g] = ranks[g].max(a.rank);
                }
            }
        }
        ranks
    }

    /// The adapters of `group` in layer `layer`, if any member has one.
    pub fn group(&self, layer: usize, group: &[usize]) -> Option<GroupAdapters> {
        let slots = &self.layers[layer];
        let mut members = Vec::new();
        let mut rank = 0;
        let mut a = None;
        for &p in group {
            if let Some(slot) = slots[p] {
                a.get_or_insert(slot.a);
                members.push((p, rank, slot.rank));
                rank += slot.rank;
            }
        }
        Some(GroupAdapters { a: a?, rank, members })
    }
}

/// The copy table of `pack_f32` (elementwise.cu), its sources' pointers filled in once they
/// are held, all together.
#[derive(Default)]
struct Copies {
    table: Vec<[u64; 4]>,
    sources: Holds,
    /// Elements placed so far.
    end: usize,
}

impl Copies {
    /// Places `tensor` (f32) at the end, times `scale`; returns its offset in elements.
    fn push(&mut self, tensor: &Tensor<CudaBackend, 2>, scale: f32) -> usize {
        let offset = self.end;
        let count = tensor.shape().num_elements();
        self.sources.add(tensor);
        self.table
            .push([0, offset as u64, count as u64, (scale as f64).to_bits()]);
        self.end += count;
        offset
    }
}
