//! Matrix products through cuBLASLt on Ember's stream, in row-major terms.
//!
//! cuBLASLt is column-major; a row-major `C = A·B` is the column-major `Cᵀ = Bᵀ·Aᵀ`, so the
//! operands swap and every row stride is a leading dimension. bf16 operands accumulate in f32
//! (output bf16 or f32); f32 operands multiply in full f32 (no TF32), the reference precision.
//! Algorithms are chosen by cuBLASLt's heuristic once per shape, stride and alignment, and kept.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of_val;

use cudarc::cublaslt::{result as lt, sys};

use crate::driver::{Buffer, Gpu};
use crate::error::Result;

/// Element type of a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    Bf16,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
        }
    }

    fn cuda(self) -> sys::cudaDataType {
        match self {
            Elem::F32 => sys::cudaDataType::CUDA_R_32F,
            Elem::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }
}

/// A row-major matrix in device memory: `rows × cols`, `ld` elements from one row to the next.
#[derive(Debug, Clone, Copy)]
pub struct Mat {
    pub ptr: u64,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub elem: Elem,
}

impl Mat {
    pub fn new(ptr: u64, rows: usize, cols: usize, elem: Elem) -> Self {
        Self {
            ptr,
            rows,
            cols,
            ld: cols,
            elem,
        }
    }

    /// Columns `[start, start + len)`.
    pub fn cols(self, start: usize, len: usize) -> Self {
        Self {
            ptr: self.ptr + (start * self.elem.size()) as u64,
            cols: len,
            ..self
        }
    }

    /// Rows `[start, start + len)`.
    pub fn rows(self, start: usize, len: usize) -> Self {
        Self {
            ptr: self.ptr + (start * self.ld * self.elem.size()) as u64,
            rows: len,
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    trans: (bool, bool),
    lds: (usize, usize, usize),
    elems: (Elem, Elem),
    aligns: (u32, u32, u32),
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: Buffer,
    plans: HashMap<Key, Plan>,
}

const WORKSPACE_BYTES: usize = 32 << 20;

impl Gemm {
    pub fn new() -> Result<Self> {
        Ok(Self {
            handle: lt::create_handle()?,
            workspace: Buffer::new(WORKSPACE_BYTES)?,
            plans: HashMap::new(),
        })
    }

    /// `out = alpha · op(a) · op(b) + beta · out`, where `op(a)` is `a` (`[m, k]`) or, with
    /// `a_t`, `aᵀ` of a stored `[k, m]`; likewise `b` (`[k, n]`, or `[n, k]` stored with `b_t`).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        gpu: &Gpu,
        out: Mat,
        a: Mat,
        a_t: bool,
        b: Mat,
        b_t: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let (m, k) = if a_t { (a.cols, a.rows) } else { (a.rows, a.cols) };
        let n = if b_t { b.rows } else { b.cols };
        debug_assert_eq!(if b_t { b.cols } else { b.rows }, k, "inner dimensions");
        debug_assert_eq!((out.rows, out.cols), (m, n), "output shape");
        debug_assert_eq!(a.elem, b.elem, "operand types");
        if m == 0 || n == 0 {
            return Ok(());
        }
        let key = Key {
            m,
            n,
            k,
            trans: (a_t, b_t),
            lds: (a.ld, b.ld, out.ld),
            elems: (a.elem, out.elem),
            aligns: (align(a.ptr), align(b.ptr), align(out.ptr)),
        };
        if !self.plans.contains_key(&key) {
            let plan = self.plan(key)?;
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        let f32_scalars = (alpha, beta);
        // SAFETY: the plan's descriptors describe exactly these pointers' matrices; the workspace
        // is ours; everything runs on Ember's stream.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&f32_scalars.0 as *const f32).cast(),
                (&f32_scalars.1 as *const f32).cast(),
                b.ptr as *const c_void,
                plan.layouts[0],
                a.ptr as *const c_void,
                plan.layouts[1],
                out.ptr as *const c_void,
                plan.layouts[2],
                out.ptr as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                self.workspace.ptr as *mut c_void,
                WORKSPACE_BYTES,
                gpu.stream as sys::cudaStream_t,
            )?;
        }
        Ok(())
    }

    /// Descriptors and the heuristic's algorithm for `key`, in column-major terms:
    /// `Cᵀ[n, m] = op(Bᵀ)[n, k] · op(Aᵀ)[k, m]`.
    fn plan(&self, key: Key) -> Result<Plan> {
        let Key {
            m,
            n,
            k,
            trans: (a_t, b_t),
            lds: (lda, ldb, ldc),
            elems: (input, output),
            aligns,
        } = key;
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)?;
        // cublasOperation_t: 0 = N, 1 = T.
        let op = |t: bool| if t { 1i32 } else { 0i32 };
        let set = |attr, value: &i32| unsafe {
            lt::set_matmul_desc_attribute(desc, attr, (value as *const i32).cast(), size_of_val(value))
        };
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &op(b_t),
        )?;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &op(a_t),
        )?;
        // Stored shapes, column-major: row-major [r, c] with row stride ld is column-major [c, r].
        let first = if b_t { (k, n) } else { (n, k) };
        let second = if a_t { (m, k) } else { (k, m) };
        let layouts = [
            lt::create_matrix_layout(input.cuda(), first.0 as u64, first.1 as u64, ldb as i64)?,
            lt::create_matrix_layout(input.cuda(), second.0 as u64, second.1 as u64, lda as i64)?,
            lt::create_matrix_layout(output.cuda(), n as u64, m as u64, ldc as i64)?,
        ];
        let pref = lt::create_matmul_pref()?;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        // The workspace limit is a uint64_t, the alignments uint32_t.
        let workspace = WORKSPACE_BYTES as u64;
        unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const u64).cast(),
                size_of_val(&workspace),
            )?;
        }
        let set_align = |attr, value: &u32| unsafe {
            lt::set_matmul_pref_attribute(pref, attr, (value as *const u32).cast(), size_of_val(value))
        };
        // The cuBLASLt "A" is Ember's b, "B" is a.
        set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aligns.1)?;
        set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &aligns.0)?;
        set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &aligns.2)?;
        set_align(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &aligns.2)?;
        // SAFETY: all descriptors were created above and are valid.
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(self.handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref)
        };
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        Ok(Plan {
            desc,
            layouts,
            algo: heuristic?.algo,
        })
    }
}

/// The largest power of two (up to 256) dividing `ptr`: what cuBLASLt may assume.
fn align(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

impl Drop for Gemm {
    fn drop(&mut self) {
        unsafe {
            for plan in self.plans.values() {
                let _ = lt::destroy_matmul_desc(plan.desc);
                for layout in plan.layouts {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
