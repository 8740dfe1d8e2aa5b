//! Typed launches of Ember's CUDA kernels (`src/kernels/`) and of cuBLASLt, on Ember's stream.
//! Pointers are raw device addresses; `Elem` picks the f32 or bf16 instance of a kernel.

use std::ffi::c_void;

use crate::driver::{Buffer, Gpu};
use crate::error::{CudaError, Result};
use crate::gemm::{Elem, Gemm, Mat};
use crate::module::Module;
use crate::profile::Profile;

/// The device, Ember's compiled kernels and cuBLASLt.
pub struct Cuda {
    pub gpu: Gpu,
    module: Module,
    gemm: Gemm,
    pub profile: Profile,
    /// Device memory for small per-call uploads (kernel argument tables), kept and regrown.
    staging: Option<Buffer>,
}

/// A kernel argument, passed by value in an 8-byte slot (little-endian: a 4-byte parameter
/// reads the slot's first half).
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

use Arg::{F32, I32, I64, Ptr};

fn opt(p: Option<u64>) -> Arg {
    Ptr(p.unwrap_or(0))
}

/// The shape of one attention call: `seq` tokens per row of a batch of `batch` rows.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// 0 = no sliding window.
    pub window: usize,
    pub scale: f32,
    /// 0 = no soft-capping.
    pub cap: f32,
}

/// Generation's KV caches of one layer, as the decoding kernels read them: keys and values of
/// every sequence (`seq_stride` elements apart), the step's per-token positions and 1-based
/// sequence numbers (device i32 arrays), and into how many splits the attention divides each
/// token's keys, with room for the splits' partial results (f32, `[tokens, heads, splits,
/// head_dim + 2]`; unused with one split).
#[derive(Debug, Clone, Copy)]
pub struct DecodeCache {
    pub k: u64,
    pub v: u64,
    pub seq_stride: usize,
    pub positions: u64,
    pub segments: u64,
    pub splits: usize,
    pub partials: u64,
}

impl AttnShape {
    fn args(&self) -> [Arg; 7] {
        [
            I32(self.seq as i32),
            I32(self.heads as i32),
            I32(self.kv_heads as i32),
            I32(self.head_dim as i32),
            I32(self.window as i32),
            F32(self.scale),
            F32(self.cap),
        ]
    }

    /// Whether the fused kernels take this shape (else the straightforward ones run).
    pub fn fused(&self, elem: Elem) -> bool {
        elem == Elem::Bf16 && matches!(self.head_dim, 64 | 128 | 256)
    }
}

/// Where an 8-bit AdamW step's data is (device pointers).
pub struct AdamStep {
    pub table: u64,
    pub tensors: usize,
    pub maps: u64,
    pub codes: [u64; 2],
    pub absmax: [u64; 2],
    pub new_codes: [u64; 2],
    pub new_absmax: [u64; 2],
    pub scalars: ember_trainer::optim::Scalars,
    pub grad_scale: f32,
}

/// Where an attention call's tensors are: `q`, `o` `[tokens, heads·head_dim]`, `k`, `v`
/// `[tokens, kv_heads·head_dim]`, `lse` `[heads, tokens]` f32, `segs` and `stats` as
/// [`crate::batch`] makes them.
/// A 4-bit (bitsandbytes) weight's device tensors and format, as `dequant4` reads them.
#[derive(Debug, Clone, Copy)]
pub struct FourBitPtrs {
    /// The packed codes, two a byte, high nibble first.
    pub packed: u64,
    /// f32 absmax per block, or with double quantization per block of 256 absmax.
    pub absmax: u64,
    /// With double quantization, the absmax's 8-bit codes; 0 without.
    pub absmax_codes: u64,
    pub offset: f32,
    /// The 16 values of the weight's 4-bit type.
    pub table: u64,
    /// The dynamic 8-bit map of double quantization.
    pub map: u64,
    pub blocksize: usize,
    pub len: usize,
    /// The dtype quantized from: 0 f32, 1 bf16, 2 f16.
    pub state: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct AttnIo {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub lse: u64,
    pub segs: u64,
    pub stats: u64,
}

const MAX_SHARED: usize = 227 * 1024;

fn pick(elem: Elem, f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    match elem {
        Elem::F32 => f32_name,
        Elem::Bf16 => bf16_name,
    }
}

/// The profile category of a kernel, from its name.
fn category(kernel: &str) -> &'static str {
    match kernel.split('_').next().unwrap_or("") {
        "rms" | "residual" => "norms",
        "rope" => "rope",
        "geglu" => "geglu",
        "cross" => "loss",
        "sum" | "adamw8bit" => "optimizer",
        "pack" => "adapter packing",
        "dropout" => "lora dropout",
        "dequant4" => "4-bit dequantization",
        "kv" => "attention decode",
        _ if kernel.contains("forward") => "attention forward",
        _ if kernel.contains("decode") => "attention decode",
        _ => "attention backward",
    }
}

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).clamp(1, 65535 * 64) as u32
}

impl Cuda {
    pub fn new(ordinal: usize) -> Result<Self> {
        let gpu = Gpu::new(ordinal)?;
        let module = Module::load(gpu.arch)?;
        let gemm = Gemm::new()?;
        Ok(Self {
            gpu,
            module,
            gemm,
            profile: Profile::default(),
            staging: None,
        })
    }

    /// Waits for Ember's stream, and files the profiled launches' times.
    pub fn finish(&mut self) -> Result<()> {
        self.gpu.sync()?;
        if self.profile.on() {
            self.profile.collect()?;
        }
        Ok(())
    }

    fn launch(
        &mut self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        shared: usize,
        args: &[Arg],
    ) -> Result<()> {
        if shared > MAX_SHARED {
            return Err(CudaError::Unsupported(format!(
                "{name} needs {shared} bytes of shared memory, more than the device's {MAX_SHARED}"
            )));
        }
        let f = self.module.function(name, shared)?;
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Ptr(p) => p,
                I32(v) => v as u32 as u64,
                I64(v) => v as u64,
                F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
        let start = self.profile.mark(self.gpu.stream)?;
        // SAFETY: every kernel's parameters are pointers, 32-bit or 64-bit integers and f32s,
        // passed in the order its signature declares.
        unsafe { self.gpu.launch(f, grid, block, shared as u32, &mut params)? };
        let end = self.profile.mark(self.gpu.stream)?;
        self.profile.file(start, end, category(name), 0.0);
        Ok(())
    }

    /// `out = alpha · op(a) · op(b) + beta · out` (see [`Gemm::run`]), profiled under `category`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        category: &'static str,
        out: Mat,
        a: Mat,
        a_t: bool,
        b: Mat,
        b_t: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let start = self.profile.mark(self.gpu.stream)?;
        self.gemm.run(&self.gpu, out, a, a_t, b, b_t, alpha, beta)?;
        let end = self.profile.mark(self.gpu.stream)?;
        let k = if a_t { a.rows } else { a.cols };
        self.profile
            .file(start, end, category, 2.0 * (out.rows * out.cols * k) as f64);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // a kernel's launch arguments
    pub fn rms_norm(&mut self, e: Elem, x: u64, w: u64, y: u64, rows: usize, cols: usize, eps: f32) -> Result<()> {
        let name = pick(e, "rms_norm_f32", "rms_norm_bf16");
        self.launch(
            name,
            (rows as u32, 1, 1),
            256,
            0,
            &[Ptr(x), Ptr(w), Ptr(y), I32(cols as i32), F32(eps)],
        )
    }

    /// `h = x + (w_post ? norm(z) : z)`, then `m = norm(h, w_next)` when `w_next` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_norm(
        &mut self,
        e: Elem,
        x: u64,
        z: u64,
        w_post: Option<u64>,
        w_next: Option<u64>,
        h: u64,
        m: Option<u64>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let name = pick(e, "residual_norm_f32", "residual_norm_bf16");
        let args = [
            Ptr(x),
            Ptr(z),
            opt(w_post),
            opt(w_next),
            Ptr(h),
            opt(m),
            I32(cols as i32),
            F32(eps),
        ];
        self.launch(name, (rows as u32, 1, 1), 256, cols * 4, &args)
    }

    /// `dx = [residual +] norm_backward(x, grad)`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward(
        &mut self,
        e: Elem,
        x: u64,
        w: u64,
        grad: u64,
        residual: Option<u64>,
        dx: u64,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let name = pick(e, "rms_norm_backward_f32", "rms_norm_backward_bf16");
        let args = [
            Ptr(x),
            Ptr(w),
            Ptr(grad),
            opt(residual),
            Ptr(dx),
            I32(cols as i32),
            F32(eps),
        ];
        self.launch(name, (rows as u32, 1, 1), 256, 0, &args)
    }

    /// Per-head norm (optional) and RoPE of `src` `[rows, heads·head_dim]` into `dst`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &mut self,
        e: Elem,
        src: u64,
        dst: u64,
        norm_w: Option<u64>,
        pos: u64,
        inv_freq: u64,
        rows: usize,
        heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let name = pick(e, "rope_f32", "rope_bf16");
        let args = [
            Ptr(src),
            Ptr(dst),
            opt(norm_w),
            Ptr(pos),
            Ptr(inv_freq),
            I64(rows as i64),
            I32(heads as i32),
            I32(head_dim as i32),
            F32(eps),
        ];
        self.launch(name, (blocks(rows * heads * 32, 256), 1, 1), 256, 0, &args)
    }

    /// The gradient of `src` given `grad` of [`Cuda::rope`]'s output.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_backward(
        &mut self,
        e: Elem,
        grad: u64,
        src: u64,
        dsrc: u64,
        norm_w: Option<u64>,
        pos: u64,
        inv_freq: u64,
        rows: usize,
        heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let name = pick(e, "rope_backward_f32", "rope_backward_bf16");
        let args = [
            Ptr(grad),
            Ptr(src),
            Ptr(dsrc),
            opt(norm_w),
            Ptr(pos),
            Ptr(inv_freq),
            I64(rows as i64),
            I32(heads as i32),
            I32(head_dim as i32),
            F32(eps),
        ];
        self.launch(name, (blocks(rows * heads * 32, 256), 1, 1), 256, 0, &args)
    }

    pub fn geglu(&mut self, e: Elem, g: u64, u: u64, p: u64, n: usize, erf: bool) -> Result<()> {
        let name = pick(e, "geglu_f32", "geglu_bf16");
        let args = [Ptr(g), Ptr(u), Ptr(p), I64(n as i64), I32(erf as i32)];
        self.launch(name, (blocks(n.div_ceil(8), 256).min(16384), 1, 1), 256, 0, &args)
    }

    /// LoRA dropout of `count` elements: `out = x · keep / keep_prob`, or `out += …` with
    /// `accumulate`; `keep` is the f32 mask of 0/1.
    #[allow(clippy::too_many_arguments)]
    pub fn dropout(
        &mut self,
        e: Elem,
        x: u64,
        keep: u64,
        out: u64,
        count: usize,
        keep_prob: f32,
        accumulate: bool,
    ) -> Result<()> {
        let name = pick(e, "dropout_f32", "dropout_bf16");
        let args = [
            Ptr(x),
            Ptr(keep),
            Ptr(out),
            I64(count as i64),
            F32(keep_prob),
            I32(accumulate as i32),
        ];
        self.launch(name, (blocks(count.div_ceil(8), 256).min(16384), 1, 1), 256, 0, &args)
    }

    /// `dg`, `du` from `dp`; they may be `g` and `u` themselves.
    #[allow(clippy::too_many_arguments)]
    pub fn geglu_backward(
        &mut self,
        e: Elem,
        dp: u64,
        g: u64,
        u: u64,
        dg: u64,
        du: u64,
        n: usize,
        erf: bool,
    ) -> Result<()> {
        let name = pick(e, "geglu_backward_f32", "geglu_backward_bf16");
        let args = [
            Ptr(dp),
            Ptr(g),
            Ptr(u),
            Ptr(dg),
            Ptr(du),
            I64(n as i64),
            I32(erf as i32),
        ];
        self.launch(name, (blocks(n.div_ceil(8), 256).min(16384), 1, 1), 256, 0, &args)
    }

    /// Copies of f32 tensors into `dst` (see `pack_f32` in elementwise.cu); `table` is on the device.
    pub fn pack(&mut self, e: Elem, table: u64, copies: usize, dst: u64) -> Result<()> {
        let name = pick(e, "pack_f32_f32", "pack_f32_bf16");
        self.launch(
            name,
            (64, copies.min(65535) as u32, 1),
            256,
            0,
            &[Ptr(table), I32(copies as i32), Ptr(dst)],
        )
    }

    /// Cross-entropy of `rows` logits rows (overwritten by their gradient); `losses` f32 per row.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy(
        &mut self,
        e: Elem,
        logits: u64,
        targets: u64,
        losses: u64,
        rows: usize,
        vocab: usize,
        cap: f32,
        inv_norm: f32,
    ) -> Result<()> {
        let name = pick(e, "cross_entropy_f32", "cross_entropy_bf16");
        let args = [
            Ptr(logits),
            Ptr(targets),
            Ptr(losses),
            I32(vocab as i32),
            F32(cap),
            F32(inv_norm),
        ];
        self.launch(name, (rows as u32, 1, 1), 1024, 0, &args)
    }

    /// The final soft-cap `tanh(l / cap) · cap` over `n` logits, in place.
    /// `out[t] = table[ids[t]] · scale` for `tokens` i32 ids, rows of `hidden`.
    #[allow(clippy::too_many_arguments)] // a kernel's launch arguments
    pub fn embed(
        &mut self,
        e: Elem,
        ids: u64,
        table: u64,
        out: u64,
        tokens: usize,
        hidden: usize,
        scale: f32,
    ) -> Result<()> {
        let name = pick(e, "embed_f32", "embed_bf16");
        let args = [Ptr(ids), Ptr(table), Ptr(out), I32(hidden as i32), F32(scale)];
        self.launch(name, (tokens as u32, 1, 1), 256, 0, &args)
    }

    /// The 4-bit weight `w` dequantized into `out` (`w.len` values of `e`).
    pub fn dequant4(&mut self, e: Elem, w: &FourBitPtrs, out: u64) -> Result<()> {
        let name = pick(e, "dequant4_f32", "dequant4_bf16");
        let args = [
            Ptr(w.packed),
            Ptr(w.table),
            Ptr(w.absmax),
            Ptr(w.absmax_codes),
            Ptr(w.map),
            F32(w.offset),
            I32(w.blocksize.trailing_zeros() as i32),
            I64(w.len as i64),
            I32(w.state),
            Ptr(out),
        ];
        self.launch(name, (blocks(w.len, 8 * 256).min(16384), 1, 1), 256, 0, &args)
    }

    pub fn softcap(&mut self, e: Elem, logits: u64, n: usize, cap: f32) -> Result<()> {
        let name = pick(e, "softcap_f32", "softcap_bf16");
        let args = [Ptr(logits), I64(n as i64), F32(cap)];
        self.launch(name, (blocks(n, 256).min(16384), 1, 1), 256, 0, &args)
    }

    /// `bytes` of device memory for uploads, valid until the next call.
    pub fn staging(&mut self, bytes: usize) -> Result<u64> {
        if self.staging.as_ref().is_none_or(|b| b.bytes < bytes) {
            self.staging = None;
            self.staging = Some(Buffer::new(bytes.next_power_of_two())?);
        }
        Ok(self.staging.as_ref().expect("allocated above").ptr)
    }

    /// `sums[i] = Σ x²` of each f32 tensor of `table` (`{pointer, length}` pairs).
    pub fn sum_squares(&mut self, table: u64, tensors: usize, sums: u64) -> Result<()> {
        self.launch(
            "sum_squares_f32",
            (tensors as u32, 1, 1),
            256,
            0,
            &[Ptr(table), Ptr(sums)],
        )
    }

    /// bnb's block-wise 8-bit AdamW over `blocks` blocks of 256 (see optimizer.cu for `table`).
    pub fn adamw8bit(&mut self, blocks: usize, step: &AdamStep) -> Result<()> {
        let s = &step.scalars;
        let args = [
            Ptr(step.table),
            I32(step.tensors as i32),
            Ptr(step.maps),
            Ptr(step.codes[0]),
            Ptr(step.codes[1]),
            Ptr(step.absmax[0]),
            Ptr(step.absmax[1]),
            Ptr(step.new_codes[0]),
            Ptr(step.new_codes[1]),
            Ptr(step.new_absmax[0]),
            Ptr(step.new_absmax[1]),
            F32(s.beta1),
            F32(s.beta2),
            F32(s.one_minus_beta1),
            F32(s.one_minus_beta2),
            F32(s.eps),
            F32(s.step_size),
            F32(s.decay.unwrap_or(1.0)),
            F32(step.grad_scale),
        ];
        self.launch("adamw8bit_blockwise", (blocks as u32, 1, 1), 256, 0, &args)
    }

    /// Attention forward: writes `io.o` and `io.lse`.
    pub fn attention_forward(&mut self, e: Elem, s: AttnShape, io: AttnIo) -> Result<()> {
        let mut args = vec![Ptr(io.q), Ptr(io.k), Ptr(io.v), Ptr(io.o), Ptr(io.lse), Ptr(io.segs)];
        if s.fused(e) {
            // The tile last: blocks start longest first (see attention_flash.cu).
            let grid = (s.heads as u32, s.batch as u32, s.seq.div_ceil(64) as u32);
            args.push(Ptr(io.stats));
            args.extend(s.args());
            let name = match s.head_dim {
                64 => "attention_flash_forward_64",
                128 => "attention_flash_forward_128",
                _ => "attention_flash_forward_256",
            };
            self.launch(name, grid, 128, 3 * 64 * s.head_dim * 2 + 2 * 64 * 4, &args)
        } else {
            args.extend(s.args());
            let name = pick(e, "attention_naive_forward_f32", "attention_naive_forward_bf16");
            self.launch(
                name,
                (s.seq as u32, s.heads as u32, s.batch as u32),
                128,
                s.seq * 4,
                &args,
            )
        }
    }

    /// Attention of a step's `s.seq` new tokens in `q` against their sequences' KV caches `k`,
    /// `v` (`[capacity, kv_heads · head_dim]` each, `seq_stride` elements apart), into `o`:
    /// generation's attention. Token `t` belongs to sequence `segments[t] - 1` and sits at
    /// `positions[t]` (device i32 arrays), its cache filled up to there.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(&mut self, e: Elem, s: AttnShape, q: u64, cache: DecodeCache, o: u64) -> Result<()> {
        if s.head_dim > 256 || s.batch != 1 {
            return Err(CudaError::Unsupported(format!(
                "decoding attention takes one row of new tokens and head_dim up to 256, not {} and {}",
                s.batch, s.head_dim
            )));
        }
        let name = pick(e, "attention_decode_f32", "attention_decode_bf16");
        let args = [
            Ptr(q),
            Ptr(cache.k),
            Ptr(cache.v),
            Ptr(o),
            Ptr(cache.partials),
            Ptr(cache.positions),
            Ptr(cache.segments),
            I64(cache.seq_stride as i64),
            I32(s.heads as i32),
            I32(s.kv_heads as i32),
            I32(s.head_dim as i32),
            I32(s.window as i32),
            F32(s.scale),
            F32(s.cap),
        ];
        let splits = cache.splits.max(1) as u32;
        self.launch(name, (s.seq as u32, s.heads as u32, splits), 256, 0, &args)?;
        if splits == 1 {
            return Ok(());
        }
        let name = pick(e, "attention_decode_combine_f32", "attention_decode_combine_bf16");
        let args = [
            Ptr(cache.partials),
            Ptr(o),
            I32(s.heads as i32),
            I32(s.head_dim as i32),
            I32(splits as i32),
        ];
        self.launch(name, (s.seq as u32, s.heads as u32, 1), 256, 0, &args)
    }

    /// Writes a step's `tokens` keys and values (`[tokens, row]` each) into their sequences'
    /// caches at their positions (see [`Cuda::attention_decode`]).
    pub fn kv_append(
        &mut self,
        e: Elem,
        k_new: u64,
        v_new: u64,
        cache: DecodeCache,
        tokens: usize,
        row: usize,
    ) -> Result<()> {
        let name = pick(e, "kv_append_f32", "kv_append_bf16");
        let args = [
            Ptr(k_new),
            Ptr(v_new),
            Ptr(cache.k),
            Ptr(cache.v),
            Ptr(cache.positions),
            Ptr(cache.segments),
            I64(cache.seq_stride as i64),
            I32(row as i32),
        ];
        self.launch(name, (tokens as u32, 1, 1), 256, 0, &args)
    }

    /// Into how many shares the dK/dV kernel splits each group of query heads: the fewest that
    /// give about four blocks per multiprocessor (one block runs per multiprocessor), so grouped
    /// heads (Gemma 2B has 8 query heads on one key head) don't leave the card idle.
    fn dkdv_splits(&self, s: AttnShape, tiles: usize) -> usize {
        let group = s.heads / s.kv_heads;
        let blocks = tiles * s.kv_heads * s.batch;
        (1..=group)
            .filter(|d| group.is_multiple_of(*d))
            .find(|d| blocks * d >= 4 * self.gpu.sms)
            .unwrap_or(group)
    }

    /// Attention backward: `dq`, `dk`, `dv` from `d_o`; `dots` is `[heads, tokens]` f32 scratch,
    /// `part` f32 scratch of `2 · tokens · heads · head_dim` when heads are grouped.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &mut self,
        e: Elem,
        s: AttnShape,
        io: AttnIo,
        d_o: u64,
        dots: u64,
        part: u64,
        dq: u64,
        dk: u64,
        dv: u64,
    ) -> Result<()> {
        let tokens = s.batch * s.seq;
        let name = pick(e, "attention_row_dot_f32", "attention_row_dot_bf16");
        let args = [
            Ptr(io.o),
            Ptr(d_o),
            Ptr(dots),
            I64(tokens as i64),
            I32(s.heads as i32),
            I32(s.head_dim as i32),
        ];
        self.launch(name, (blocks(tokens * s.heads * 32, 256), 1, 1), 256, 0, &args)?;
        let common = [Ptr(io.q), Ptr(io.k), Ptr(io.v), Ptr(d_o), Ptr(io.lse), Ptr(dots)];
        if s.fused(e) {
            let hd = s.head_dim;
            let (dkdv, dq_name, bn) = match hd {
                64 => ("attention_flash_backward_dkdv_64", "attention_flash_backward_dq_64", 64),
                128 => (
                    "attention_flash_backward_dkdv_128",
                    "attention_flash_backward_dq_128",
                    64,
                ),
                _ => (
                    "attention_flash_backward_dkdv_256",
                    "attention_flash_backward_dq_256",
                    32,
                ),
            };
            let tiles = s.seq.div_ceil(64);
            let splits = self.dkdv_splits(s, tiles);
            let mut args = common.to_vec();
            args.extend([
                Ptr(dk),
                Ptr(dv),
                Ptr(part),
                I32(splits as i32),
                Ptr(io.segs),
                Ptr(io.stats),
            ]);
            args.extend(s.args());
            let shared = 6 * 64 * hd * 2 + 2 * 64 * 64 * 2 + 4 * 64 * 4;
            let grid = ((s.kv_heads * splits) as u32, s.batch as u32, tiles as u32);
            self.launch(dkdv, grid, 256, shared, &args)?;
            if splits > 1 {
                let n = tokens * s.kv_heads * hd;
                let args = [Ptr(part), Ptr(dk), Ptr(dv), I64(n as i64), I32(splits as i32)];
                self.launch(
                    "attention_flash_sum_splits",
                    (blocks(n, 256).min(4096), 1, 1),
                    256,
                    0,
                    &args,
                )?;
            }
            let mut args = common.to_vec();
            args.extend([Ptr(dq), Ptr(io.segs), Ptr(io.stats)]);
            args.extend(s.args());
            let shared = 2 * 64 * hd * 2 + 3 * bn * hd * 2 + (64 + bn) * 4;
            self.launch(
                dq_name,
                (s.heads as u32, s.batch as u32, tiles as u32),
                128,
                shared,
                &args,
            )
        } else {
            let group = s.heads / s.kv_heads;
            let mut args = common.to_vec();
            args.extend([Ptr(dq), Ptr(io.segs)]);
            args.extend(s.args());
            let name = pick(e, "attention_naive_backward_dq_f32", "attention_naive_backward_dq_bf16");
            self.launch(
                name,
                (s.seq as u32, s.heads as u32, s.batch as u32),
                128,
                s.seq * 4,
                &args,
            )?;
            let mut args = common.to_vec();
            args.extend([Ptr(dk), Ptr(dv), Ptr(io.segs)]);
            args.extend(s.args());
            let name = pick(
                e,
                "attention_naive_backward_dkdv_f32",
                "attention_naive_backward_dkdv_bf16",
            );
            let shared = 2 * group * s.seq * 4;
            self.launch(
                name,
                (s.seq as u32, s.kv_heads as u32, s.batch as u32),
                128,
                shared,
                &args,
            )
        }
    }
}
