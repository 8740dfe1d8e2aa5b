//! Shared helpers: the fixture checkpoints of `fixtures/models/` and their reference batch.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use ember_model::{AttentionMask, ForwardInput, GemmaForCausalLM, IGNORE_INDEX, LoadOptions};
use safetensors::SafeTensors;

pub type B = NdArray<f32>;
pub type AD = Autodiff<NdArray<f32>>;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn model_dir(name: &str) -> PathBuf {
    repo().join("fixtures/models").join(name)
}

pub fn load<Bk: Backend>(dir: &Path) -> GemmaForCausalLM<Bk> {
    GemmaForCausalLM::load(dir, &LoadOptions::new(DType::F32), &Default::default()).unwrap()
}

/// The padded two-row batch of the model fixtures: ids, segments and labels.
pub struct Batch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    pub fn of(model: &str) -> Self {
        let bytes = std::fs::read(model_dir(model).join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let ints = |name: &str| -> Vec<i64> {
            st.tensor(name)
                .unwrap()
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let shape = st.tensor("input_ids").unwrap().shape().to_vec();
        Self {
            ids: ints("input_ids"),
            mask: ints("attention_mask"),
            batch: shape[0],
            seq: shape[1],
        }
    }

    pub fn input<Bk: Backend>(&self) -> ForwardInput<Bk> {
        let device = Default::default();
        let shape = [self.batch, self.seq];
        let ids = Tensor::<Bk, 1, Int>::from_data(self.ids.as_slice(), &device).reshape(shape);
        let segments = Tensor::<Bk, 1, Int>::from_data(self.mask.as_slice(), &device).reshape(shape);
        let positions = Tensor::<Bk, 1, Int>::arange(0..self.seq as i64, &device)
            .reshape([1, self.seq])
            .expand(shape);
        ForwardInput {
            input_ids: ids,
            positions,
            mask: AttentionMask::with_segments(segments),
        }
    }

    /// Input ids with padding ignored, as the fixtures' loss uses.
    pub fn labels<Bk: Backend>(&self) -> Tensor<Bk, 2, Int> {
        let labels: Vec<i64> = self
            .ids
            .iter()
            .zip(&self.mask)
            .map(|(&id, &m)| if m == 0 { IGNORE_INDEX } else { id })
            .collect();
        Tensor::<Bk, 1, Int>::from_data(labels.as_slice(), &Default::default()).reshape([self.batch, self.seq])
    }

    /// Logits at real (unpadded) positions only, flattened.
    pub fn real_logits(&self, logits: &[f32], vocab: usize) -> Vec<f32> {
        (0..self.batch * self.seq)
            .filter(|&i| self.mask[i] != 0)
            .flat_map(|i| logits[i * vocab..(i + 1) * vocab].iter().copied())
            .collect()
    }
}

pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().into_vec::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}
