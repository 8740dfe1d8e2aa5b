//! Checking a model against logits that transformers computed: the fixtures of
//! `fixtures/make_fixtures.py`, or a user's own check of a converted checkpoint. The file is a
//! safetensors with `input_ids` and `attention_mask` (`[batch, seq]`, I64, padding marked 0) and
//! `logits` (`[batch, seq, vocab]`, F32), as `model(input_ids, attention_mask=...).logits` gives.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::{AttentionMask, DecodeStep, ForwardInput, GemmaForCausalLM, ModelError, Result, argmax};

impl LogitsComparison {
    /// The worst difference, full-sequence or cached; NaN if either is.
    pub fn worst(&self) -> f32 {
        nan_max(self.max_abs_diff, self.cached_max_abs_diff.unwrap_or(0.0))
    }

    /// Whether every real position picks the reference's top token.
    pub fn all_argmax_agree(&self) -> bool {
        self.same_argmax == self.positions
    }
}

/// What transformers computed for a padded batch.
pub struct LogitsReference {
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub logits: Vec<f32>,
}

/// How far a model is from a reference: the worst |Δlogit| over every real token of the batch,
/// the same through the KV cache one token at a time (for the first row without padding, if any),
/// and how many real positions pick the reference's top token. A NaN logit makes the worst
/// difference NaN, which no tolerance accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitsComparison {
    pub max_abs_diff: f32,
    pub cached_max_abs_diff: Option<f32>,
    pub same_argmax: usize,
    pub positions: usize,
}

impl LogitsReference {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let bad = |message: String| ModelError::Safetensors {
            path: PathBuf::from(path),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let tensor = |name: &str, dtype: Dtype, rank: usize| {
            let view = st.tensor(name).map_err(|_| {
                bad(format!(
                    "no tensor `{name}` (a reference holds input_ids, attention_mask and logits)"
                ))
            })?;
            if view.dtype() != dtype || view.shape().len() != rank {
                return Err(bad(format!(
                    "`{name}` is {:?} {:?}; expected {dtype:?} of rank {rank}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(view)
        };
        let ints = |name: &str| -> Result<(Vec<usize>, Vec<i64>)> {
            let view = tensor(name, Dtype::I64, 2)?;
            let values = view
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()));
            Ok((view.shape().to_vec(), values.collect()))
        };
        let (ids_shape, input_ids) = ints("input_ids")?;
        let (mask_shape, attention_mask) = ints("attention_mask")?;
        let view = tensor("logits", Dtype::F32, 3)?;
        let [batch, seq, vocab] = [view.shape()[0], view.shape()[1], view.shape()[2]];
        if ids_shape != [batch, seq] || mask_shape != [batch, seq] {
            return Err(bad(format!(
                "input_ids {ids_shape:?} and attention_mask {mask_shape:?} must be [{batch}, {seq}] like the logits"
            )));
        }
        let logits = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        Ok(Self {
            batch,
            seq,
            vocab,
            input_ids,
            attention_mask,
            logits: logits.collect(),
        })
    }

    /// Reference logits of one position.
    pub fn logits_at(&self, row: usize, pos: usize) -> &[f32] {
        let start = (row * self.seq + pos) * self.vocab;
        &self.logits[start..start + self.vocab]
    }

    fn is_real(&self, row: usize, pos: usize) -> bool {
        self.attention_mask[row * self.seq + pos] != 0
    }

    /// Runs `model` on the reference batch (full sequences, then cached decoding) and compares.
    pub fn compare<B: Backend>(&self, model: &GemmaForCausalLM<B>, device: &B::Device) -> Result<LogitsComparison> {
        let mut result = self.compare_full(model, device)?;
        result.cached_max_abs_diff = self.compare_cached(model, device)?;
        Ok(result)
    }

    fn check_vocab<B: Backend>(&self, model: &GemmaForCausalLM<B>) -> Result<()> {
        if model.config.vocab_size != self.vocab {
            return Err(ModelError::Generation(format!(
                "the reference has a vocabulary of {} but the model {}",
                self.vocab, model.config.vocab_size
            )));
        }
        Ok(())
    }

    /// The full-sequence half of [`Self::compare`] (`cached_max_abs_diff` stays `None`).
    pub fn compare_full<B: Backend>(
        &self,
        model: &GemmaForCausalLM<B>,
        device: &B::Device,
    ) -> Result<LogitsComparison> {
        self.check_vocab(model)?;
        let [batch, seq] = [self.batch, self.seq];
        let ids = Tensor::<B, 1, Int>::from_data(self.input_ids.as_slice(), device).reshape([batch, seq]);
        let segments = Tensor::<B, 1, Int>::from_data(self.attention_mask.as_slice(), device).reshape([batch, seq]);
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let input = ForwardInput {
            input_ids: ids,
            positions,
            mask: AttentionMask::with_segments(segments),
        };
        self.compare_logits(&to_f32(model.forward(input, None))?)
    }

    /// The full-sequence comparison of `logits` `[batch, seq, vocab]` computed elsewhere (by
    /// another implementation of the model) for the reference batch, with positions
    /// `0..seq` in every row and the attention mask as segment ids.
    pub fn compare_logits(&self, logits: &[f32]) -> Result<LogitsComparison> {
        let [batch, seq] = [self.batch, self.seq];
        if logits.len() != batch * seq * self.vocab {
            return Err(ModelError::Generation(format!(
                "{} logits for a reference of {batch} × {seq} × {}",
                logits.len(),
                self.vocab
            )));
        }
        let mut result = LogitsComparison {
            max_abs_diff: 0.0,
            cached_max_abs_diff: None,
            same_argmax: 0,
            positions: 0,
        };
        for row in 0..batch {
            for pos in (0..seq).filter(|&pos| self.is_real(row, pos)) {
                let start = (row * seq + pos) * self.vocab;
                let got = &logits[start..start + self.vocab];
                let want = self.logits_at(row, pos);
                result.max_abs_diff = nan_max(result.max_abs_diff, max_abs_diff(got, want));
                result.positions += 1;
                result.same_argmax += usize::from(argmax(got) == argmax(want));
            }
        }
        Ok(result)
    }

    /// The cached half of [`Self::compare`]: the first row without padding decoded through the
    /// KV cache, a short prefix at once, then a token per step. `None` if every row is padded.
    pub fn compare_cached<B: Backend>(&self, model: &GemmaForCausalLM<B>, device: &B::Device) -> Result<Option<f32>> {
        self.check_vocab(model)?;
        self.compare_decoder(&mut model.decoder(self.seq, device))
    }

    /// [`Self::compare_cached`] through any [`DecodeStep`] (a cache of `seq` positions): the
    /// logits of each step's last position against the reference's, from the prefix's last
    /// position on.
    pub fn compare_decoder(&self, decoder: &mut dyn DecodeStep) -> Result<Option<f32>> {
        let Some(row) = (0..self.batch).find(|&row| (0..self.seq).all(|pos| self.is_real(row, pos))) else {
            return Ok(None);
        };
        let ids: Vec<u32> = self.input_ids[row * self.seq..(row + 1) * self.seq]
            .iter()
            .map(|&id| id as u32)
            .collect();
        let mut worst = 0f32;
        let mut start = 0;
        while start < self.seq {
            let len = if start == 0 { self.seq.min(5) } else { 1 };
            let got = decoder.step(&ids[start..start + len])?;
            if got.len() != self.vocab {
                return Err(ModelError::Generation(format!(
                    "{} logits for a vocabulary of {}",
                    got.len(),
                    self.vocab
                )));
            }
            worst = nan_max(worst, max_abs_diff(&got, self.logits_at(row, start + len - 1)));
            start += len;
        }
        Ok(Some(worst))
    }
}

fn to_f32<B: Backend>(t: Tensor<B, 3>) -> Result<Vec<f32>> {
    t.cast(DType::F32)
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Generation(format!("cannot read logits back: {e:?}")))
}

/// The largest |a − b|, NaN if any difference is NaN (`f32::max` would drop it).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, nan_max)
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }
}
