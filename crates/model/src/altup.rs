//! Gemma 3n's AltUp (alternating updates): the residual stream is `n` versions of the hidden
//! state, kept side by side as `[tokens, n, hidden]` (a layer's input and output are
//! `[batch, seq, n·hidden]`). Each layer predicts all versions from a mix of them, runs on the
//! active one and corrects the others with what it computed. The embedding makes the extra
//! versions by projection, and the model's output averages them back.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor, backend::Backend};

use crate::linear::Linear;
use crate::matmul::{matmul, matmul_transposed};
use crate::model::GemmaModel;
use crate::norm::RmsNorm;

/// One layer's AltUp coefficients.
#[derive(Module, Debug)]
pub struct AltUp<B: Backend> {
    /// `[hidden]`: scales the active output before the per-layer input block.
    pub correct_output_scale: Param<Tensor<B, 1>>,
    /// `[n, n]`: the correction of each version from the router's modalities.
    pub correction_coefs: Linear<B>,
    /// `[n·n, n]`: the prediction mix of the versions from the modalities.
    pub prediction_coefs: Linear<B>,
    /// `[n, hidden]`.
    pub modality_router: Linear<B>,
    pub router_norm: RmsNorm<B>,
    #[module(skip)]
    pub active_idx: usize,
    /// transformers clamps both coefficient weights to ±this in training mode.
    #[module(skip)]
    pub coef_clip: Option<f64>,
    /// Whether the active corrected version is scaled before the per-layer input block.
    #[module(skip)]
    pub correct_scale: bool,
}

/// What the backward of [`AltUp::modalities`] needs.
#[derive(Debug, Clone)]
pub struct ModalitiesSaved<B: Backend> {
    x: Tensor<B, 2>,
    /// `tanh` of the router's output.
    modalities: Tensor<B, 2>,
}

impl<B: Backend> AltUp<B> {
    /// `tanh(router(norm(x)/hidden))` `[tokens, n]` for one version `x` `[tokens, hidden]`; the
    /// tanh in f32.
    pub fn modalities(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, ModalitiesSaved<B>) {
        let hidden = x.dims()[1];
        let routed = self
            .modality_router
            .forward(self.router_norm.forward(x.clone()) * (hidden as f64).recip());
        let dtype = routed.dtype();
        let modalities = routed.cast(DType::F32).tanh().cast(dtype);
        let saved = ModalitiesSaved {
            x,
            modalities: modalities.clone(),
        };
        (modalities, saved)
    }

    fn modalities_backward(&self, saved: ModalitiesSaved<B>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
        let hidden = saved.x.dims()[1];
        let m = saved.modalities;
        let d_routed = grad * (m.clone().square().neg() + 1.0);
        let d_normed = matmul(d_routed, self.modality_router.weight.val()) * (hidden as f64).recip();
        self.router_norm.backward(saved.x, d_normed)
    }

    /// A coefficient weight as the forward uses it: clamped in training, as transformers does.
    fn coefs(&self, linear: &Linear<B>, training: bool) -> Tensor<B, 2> {
        match (training, self.coef_clip) {
            (true, Some(clip)) => linear.weight.val().clamp(-clip, clip),
            _ => linear.weight.val(),
        }
    }

    /// The predictions `[tokens, n, hidden]` from the versions `x`:
    /// `x_k + Σ_j P_kj·x_j`, with `P` from the active version's modalities.
    pub fn predict(&self, x: Tensor<B, 3>, training: bool) -> (Tensor<B, 3>, PredictSaved<B>) {
        let [tokens, n, hidden] = x.dims();
        let active = x.clone().narrow(1, self.active_idx, 1).reshape([tokens, hidden]);
        let (modalities, router) = self.modalities(active);
        let mix = matmul_transposed(modalities, self.coefs(&self.prediction_coefs, training)).reshape([tokens, n, n]);
        let predictions = matmul(mix.clone(), x.clone()) + x.clone();
        (predictions, PredictSaved { x, mix, router })
    }

    /// The versions' gradient given the predictions'.
    pub fn predict_backward(&self, saved: PredictSaved<B>, grad: Tensor<B, 3>, training: bool) -> Tensor<B, 3> {
        let [tokens, n, hidden] = grad.dims();
        let mut dx = grad.clone() + matmul(saved.mix.swap_dims(1, 2), grad.clone());
        let d_mix = matmul(grad, saved.x.swap_dims(1, 2)).reshape([tokens, n * n]);
        let d_modalities = matmul(d_mix, self.coefs(&self.prediction_coefs, training));
        let d_active = self
            .modalities_backward(saved.router, d_modalities)
            .reshape([tokens, 1, hidden]);
        let a = self.active_idx;
        let current = dx.clone().narrow(1, a, 1);
        dx = dx.slice_assign([0..tokens, a..a + 1, 0..hidden], current + d_active);
        dx
    }

    /// The corrected versions `[tokens, n, hidden]`: `pred_k + c_k·(activated − pred_active)`,
    /// with `c = correction(modalities(activated)) + 1`.
    pub fn correct(
        &self,
        predictions: Tensor<B, 3>,
        activated: Tensor<B, 2>,
        training: bool,
    ) -> (Tensor<B, 3>, CorrectSaved<B>) {
        let [tokens, _, hidden] = predictions.dims();
        let (modalities, router) = self.modalities(activated.clone());
        let coefs = matmul_transposed(modalities, self.coefs(&self.correction_coefs, training)) + 1.0;
        let innovation = activated
            - predictions
                .clone()
                .narrow(1, self.active_idx, 1)
                .reshape([tokens, hidden]);
        let corrected = predictions + coefs.clone().unsqueeze_dim::<3>(2) * innovation.clone().unsqueeze_dim::<3>(1);
        let saved = CorrectSaved {
            coefs,
            innovation,
            router,
        };
        (corrected, saved)
    }

    /// The gradients of the predictions and of the activated version given the corrected
    /// versions'.
    pub fn correct_backward(
        &self,
        saved: CorrectSaved<B>,
        grad: Tensor<B, 3>,
        training: bool,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [tokens, n, hidden] = grad.dims();
        let d_innovation = matmul(saved.coefs.unsqueeze_dim::<3>(1), grad.clone()).reshape([tokens, hidden]);
        let d_coefs = matmul(grad.clone(), saved.innovation.unsqueeze_dim::<3>(2)).reshape([tokens, n]);
        let d_modalities = matmul(d_coefs, self.coefs(&self.correction_coefs, training));
        let d_activated = d_innovation.clone() + self.modalities_backward(saved.router, d_modalities);
        let a = self.active_idx;
        let current = grad.clone().narrow(1, a, 1);
        let d_predictions = grad.slice_assign(
            [0..tokens, a..a + 1, 0..hidden],
            current - d_innovation.reshape([tokens, 1, hidden]),
        );
        (d_predictions, d_activated)
    }

    /// `x · correct_output_scale`.
    pub fn scale_output(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x * self.correct_output_scale.val().unsqueeze::<2>()
    }
}

/// What [`AltUp::predict_backward`] needs.
#[derive(Debug, Clone)]
pub struct PredictSaved<B: Backend> {
    x: Tensor<B, 3>,
    /// `[tokens, n, n]`.
    mix: Tensor<B, 3>,
    router: ModalitiesSaved<B>,
}

/// What [`AltUp::correct_backward`] needs.
#[derive(Debug, Clone)]
pub struct CorrectSaved<B: Backend> {
    /// `[tokens, n]`.
    coefs: Tensor<B, 2>,
    innovation: Tensor<B, 2>,
    router: ModalitiesSaved<B>,
}

/// The smallest mean square a projected version is divided by, as transformers clamps it.
const MIN_MEAN_SQUARE: f64 = 1e-5;

/// `projected · rms(target) / rms(projected)` with the mean square clamped, for rows.
fn rescale<B: Backend>(projected: Tensor<B, 2>, target_rms: Tensor<B, 2>) -> Tensor<B, 2> {
    let rms = projected.clone().square().mean_dim(1).clamp_min(MIN_MEAN_SQUARE).sqrt();
    projected * target_rms / rms
}

impl<B: Backend> GemmaModel<B> {
    /// The versions `[batch, seq, n·hidden]` of the embeddings `[batch, seq, hidden]`: the
    /// embeddings, then each of `altup_projections` of them rescaled to the embeddings' RMS.
    pub fn altup_streams(&self, embeds: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.altup_projections.is_empty() {
            return embeds;
        }
        let [batch, seq, hidden] = embeds.dims();
        let rows = embeds.reshape([batch * seq, hidden]);
        let target = rows.clone().square().mean_dim(1).sqrt();
        let mut versions = vec![rows.clone()];
        for projection in &self.altup_projections {
            versions.push(rescale(projection.forward(rows.clone()), target.clone()));
        }
        let n = versions.len();
        Tensor::stack::<3>(versions, 1).reshape([batch, seq, n * hidden])
    }

    /// The mean of the versions `[n, hidden]`-wide rows `x` `[tokens, n·hidden]` after
    /// `altup_unembed_projections`, rescaled to the first version's RMS: the last layer's output
    /// as one hidden state. Rows without versions are returned as they are.
    pub fn merge_streams(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.merge_streams_saving(x).0
    }

    pub(crate) fn merge_streams_saving(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, Option<MergeSaved<B>>) {
        if self.altup_unembed_projections.is_empty() {
            return (x, None);
        }
        let n = self.altup_unembed_projections.len() + 1;
        let [tokens, width] = x.dims();
        let hidden = width / n;
        let versions = x.reshape([tokens, n, hidden]);
        let first = versions.clone().narrow(1, 0, 1).reshape([tokens, hidden]);
        let target = first.clone().square().mean_dim(1).sqrt();
        let mut sum = first;
        let mut projected = Vec::new();
        for (i, projection) in self.altup_unembed_projections.iter().enumerate() {
            let version = versions.clone().narrow(1, i + 1, 1).reshape([tokens, hidden]);
            let u = projection.forward(version);
            sum = sum + rescale(u.clone(), target.clone());
            projected.push(u);
        }
        let saved = MergeSaved {
            versions,
            target,
            projected,
        };
        (sum / n as f64, Some(saved))
    }

    /// The versions' gradient `[tokens, n·hidden]` given the merged rows'.
    pub(crate) fn merge_streams_backward(&self, saved: Option<MergeSaved<B>>, grad: Tensor<B, 2>) -> Tensor<B, 2> {
        let Some(saved) = saved else { return grad };
        let MergeSaved {
            versions,
            target,
            projected,
        } = saved;
        let [tokens, n, hidden] = versions.dims();
        let d_version = grad / n as f64;
        let first = versions.clone().narrow(1, 0, 1).reshape([tokens, hidden]);
        let mut d_first = d_version.clone();
        let mut d_target = target.zeros_like();
        let mut grads = Vec::new();
        for (u, projection) in projected.into_iter().zip(&self.altup_unembed_projections) {
            // o = u·t/m, m = sqrt(max(mean(u²), ε)): do/du = t/m − u·(u·do)·t/(H·m³) where unclamped.
            let mean_square = u.clone().square().mean_dim(1);
            let unclamped = mean_square
                .clone()
                .greater_elem(MIN_MEAN_SQUARE)
                .float()
                .cast(u.dtype());
            let m = mean_square.clamp_min(MIN_MEAN_SQUARE).sqrt();
            let dot = (d_version.clone() * u.clone()).sum_dim(1);
            d_target = d_target + dot.clone() / m.clone();
            let d_u = d_version.clone() * target.clone() / m.clone()
                - u * (dot * target.clone() * unclamped / ((m.clone() * m.clone() * m) * hidden as f64));
            grads.push(matmul(d_u, projection.weight.val()));
        }
        // t = sqrt(mean(first²)): dt/dfirst = first/(H·t).
        d_first = d_first + first * d_target / (target * hidden as f64);
        let mut all = vec![d_first];
        all.extend(grads);
        Tensor::stack::<3>(all, 1).reshape([tokens, n * hidden])
    }
}

/// What [`GemmaModel::merge_streams_backward`] needs.
#[derive(Debug, Clone)]
pub(crate) struct MergeSaved<B: Backend> {
    versions: Tensor<B, 3>,
    target: Tensor<B, 2>,
    /// Each non-first version after its unembedding projection.
    projected: Vec<Tensor<B, 2>>,
}
