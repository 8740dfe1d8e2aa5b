use burn::backend::NdArray;
use ember_model::Linear;

use crate::error::Result;
use crate::matvec::project;
use crate::values::Values;

/// A projection's weight `[out, in]`, read in place, with its LoRA adapter applied as
/// `ember_model::Lora` applies it: `base + scale · B(A(x))`, in f32, never folded into the
/// weight.
pub(crate) struct Projection {
    weight: Values,
    cols: usize,
    rows: usize,
    adapter: Option<Adapter>,
}

struct Adapter {
    /// `[r, in]` and `[out, r]`.
    a: Values,
    b: Values,
    rank: usize,
    scale: f32,
}

impl Projection {
    /// `linear` (the module at `path`), read in place.
    pub fn of(linear: &Linear<NdArray>, path: &str) -> Result<Self> {
        let [rows, cols] = linear.shape();
        let adapter = match &linear.lora {
            Some(lora) => Some(Adapter {
                a: Values::of(lora.a.val(), &format!("{path}.lora_A.weight"))?,
                b: Values::of(lora.b.val(), &format!("{path}.lora_B.weight"))?,
                rank: lora.rank(),
                scale: lora.scale as f32,
            }),
            None => None,
        };
        Ok(Self {
            weight: Values::of(linear.weight.val(), &format!("{path}.weight"))?,
            cols,
            rows,
            adapter,
        })
    }

    /// A weight without an adapter: the tied LM head, which is the embedding.
    pub fn plain(weight: Values, rows: usize, cols: usize) -> Self {
        Self {
            weight,
            cols,
            rows,
            adapter: None,
        }
    }

    /// `x` `[n, in]` → `[n, out]`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.cols;
        let mut out = vec![0f32; n * self.rows];
        project(self.weight.get(), self.cols, x, &mut out);
        if let Some(adapter) = &self.adapter {
            let mut z = vec![0f32; n * adapter.rank];
            project(adapter.a.get(), self.cols, x, &mut z);
            let mut delta = vec![0f32; n * self.rows];
            project(adapter.b.get(), adapter.rank, &z, &mut delta);
            for (o, d) in out.iter_mut().zip(&delta) {
                *o += d * adapter.scale;
            }
        }
        out
    }
}
