//! The final norm, LM head and cross-entropy with their backward, in chunks of rows sized so a
//! chunk's logits stay within the scratch (~256 MiB): the CUDA counterpart of
//! `GemmaForCausalLM::head_loss`, and the logits alone.

use crate::error::Result;
use crate::gemm::Mat;
use crate::ops::Cuda;
use crate::scratch::Scratch;

/// What the head needs: the final norm's weight and the `[vocab, hidden]` head (the tied
/// embedding or `lm_head`).
pub struct HeadRun {
    pub norm: u64,
    pub head: u64,
    pub targets: u64,
    pub tokens: usize,
    pub cap: f32,
    pub eps: f32,
    pub normaliser: f64,
}

/// Writes the gradient of `Σ losses / normaliser` with respect to `x` (`[tokens, hidden]`) into
/// `dx` (when given: evaluation needs none) and returns `Σ losses`.
pub fn head_loss(cx: &mut Cuda, s: &Scratch, run: &HeadRun, x: u64, dx: Option<u64>) -> Result<f64> {
    let (d, p, e) = (&s.dims, &s.ptrs, s.dims.elem);
    let row_bytes = (d.hidden * e.size()) as u64;
    let head = Mat::new(run.head, d.vocab, d.hidden, e);
    for start in (0..run.tokens).step_by(d.head_rows) {
        let len = d.head_rows.min(run.tokens - start);
        let x_rows = x + start as u64 * row_bytes;
        let logits = Mat::new(p.logits, len, d.vocab, e);
        chunk_logits(cx, s, run, x_rows, logits)?;
        let targets = run.targets + 4 * start as u64;
        let losses = p.losses + 4 * start as u64;
        let inv = (1.0 / run.normaliser) as f32;
        cx.cross_entropy(e, p.logits, targets, losses, len, d.vocab, run.cap, inv)?;
        let Some(dx) = dx else { continue };
        cx.gemm(
            "gemm head",
            Mat::new(p.head_grad, len, d.hidden, e),
            logits,
            false,
            head,
            false,
            1.0,
            0.0,
        )?;
        let dx_rows = dx + start as u64 * row_bytes;
        cx.rms_norm_backward(e, x_rows, run.norm, p.head_grad, None, dx_rows, len, d.hidden, run.eps)?;
    }
    let mut losses = vec![0f32; run.tokens];
    cx.gpu.download(&mut losses, p.losses)?;
    Ok(losses.iter().map(|&l| l as f64).sum())
}

/// Writes the soft-capped logits `[tokens, vocab]` of `x` into `out`, in the model dtype.
pub fn head_logits(cx: &mut Cuda, s: &Scratch, run: &HeadRun, x: u64, out: u64) -> Result<()> {
    let (d, e) = (&s.dims, s.dims.elem);
    for start in (0..run.tokens).step_by(d.head_rows) {
        let len = d.head_rows.min(run.tokens - start);
        let x_rows = x + (start * d.hidden * e.size()) as u64;
        let rows = Mat::new(out + (start * d.vocab * e.size()) as u64, len, d.vocab, e);
        chunk_logits(cx, s, run, x_rows, rows)?;
        if run.cap != 0.0 {
            cx.softcap(e, rows.ptr, len * d.vocab, run.cap)?;
        }
    }
    Ok(())
}

/// The final norm of `logits.rows` rows of `x` (into the scratch), then their LM-head
/// logits, before any soft-cap.
fn chunk_logits(cx: &mut Cuda, s: &Scratch, run: &HeadRun, x: u64, logits: Mat) -> Result<()> {
    let (d, e) = (&s.dims, s.dims.elem);
    cx.rms_norm(e, x, run.norm, s.ptrs.head_normed, logits.rows, d.hidden, run.eps)?;
    let normed = Mat::new(s.ptrs.head_normed, logits.rows, d.hidden, e);
    let head = Mat::new(run.head, d.vocab, d.hidden, e);
    cx.gemm("gemm head", logits, normed, false, head, true, 1.0, 0.0)
}
