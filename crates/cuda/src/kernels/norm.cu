// Gemma's RMSNorm `x / rms(x) * (1 + w)` in f32, its backward for a frozen weight, and the
// residual + norm pairs of a decoder layer, one row per block, eight columns at a time (rows of
// a multiple of 8 columns, 16-byte aligned).

#define FOR_COLS_8(c) for (int c = 8 * threadIdx.x; c < cols; c += 8 * blockDim.x)

// y = norm(x); rows of `cols`.
template <typename T>
__device__ void rms_norm(const T* x, const T* w, T* y, int cols, float eps) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * cols;
    y += row * cols;
    float ss = 0.0f;
    FOR_COLS_8(c) {
        float v[8];
        load8(x + c, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
    }
    const float r = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    FOR_COLS_8(c) {
        float v[8], wv[8];
        load8(x + c, v);
        load8(w + c, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = v[j] * r * (wv[j] + 1.0f);
        store8(y + c, v);
    }
}

// h = x + (w_post ? norm(z, w_post) : z); then, with w_next, m = norm(h, w_next). The row of
// `h` is kept in shared memory (`cols` floats, dynamic) for the second norm.
template <typename T>
__device__ void residual_norm(const T* x, const T* z, const T* w_post, const T* w_next, T* h, T* m, int cols,
                              float eps) {
    extern __shared__ float row_h[];
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * cols;
    z += row * cols;
    h += row * cols;
    float r = 1.0f;
    if (w_post) {
        float ss = 0.0f;
        FOR_COLS_8(c) {
            float v[8];
            load8(z + c, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
        }
        r = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    }
    float ss = 0.0f;
    FOR_COLS_8(c) {
        float v[8], xv[8], wv[8];
        load8(z + c, v);
        load8(x + c, xv);
        if (w_post) load8(w_post + c, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (w_post) v[j] = round_to<T>(v[j] * r * (wv[j] + 1.0f));
            v[j] = round_to<T>(xv[j] + v[j]);
            row_h[c + j] = v[j];
            ss += v[j] * v[j];
        }
        store8(h + c, v);
    }
    if (!w_next) return;
    const float rh = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    m += row * cols;
    FOR_COLS_8(c) {
        float v[8], wv[8];
        load8(w_next + c, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = row_h[c + j] * rh * (wv[j] + 1.0f);
        store8(m + c, v);
    }
}

// dx = [residual +] norm_backward(x, grad): `r·(g' − n·mean(g'·n))` with `g' = grad·(1 + w)`,
// `n = x·r`; the result rounded to T before the residual is added, as the reference does.
template <typename T>
__device__ void rms_norm_backward(const T* x, const T* w, const T* grad, const T* residual, T* dx, int cols,
                                  float eps) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * cols;
    grad += row * cols;
    dx += row * cols;
    if (residual) residual += row * cols;
    float ss = 0.0f;
    FOR_COLS_8(c) {
        float v[8];
        load8(x + c, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
    }
    const float r = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    float dot = 0.0f;
    FOR_COLS_8(c) {
        float xv[8], gv[8], wv[8];
        load8(x + c, xv);
        load8(grad + c, gv);
        load8(w + c, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j) dot += gv[j] * (wv[j] + 1.0f) * xv[j] * r;
    }
    dot = block_sum(dot, scratch) / cols;
    FOR_COLS_8(c) {
        float xv[8], gv[8], wv[8], rv[8];
        load8(x + c, xv);
        load8(grad + c, gv);
        load8(w + c, wv);
        if (residual) load8(residual + c, rv);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float n = xv[j] * r;
            const float g = gv[j] * (wv[j] + 1.0f);
            xv[j] = round_to<T>(r * (g - n * dot));
            if (residual) xv[j] = round_to<T>(rv[j] + xv[j]);
        }
        store8(dx + c, xv);
    }
}

#define EMBER_NORM_KERNELS(T, S)                                                                           \
    extern "C" __global__ void rms_norm_##S(const T* x, const T* w, T* y, int cols, float eps) {           \
        rms_norm<T>(x, w, y, cols, eps);                                                                   \
    }                                                                                                      \
    extern "C" __global__ void residual_norm_##S(const T* x, const T* z, const T* w_post, const T* w_next, \
                                                 T* h, T* m, int cols, float eps) {                        \
        residual_norm<T>(x, z, w_post, w_next, h, m, cols, eps);                                           \
    }                                                                                                      \
    extern "C" __global__ void rms_norm_backward_##S(const T* x, const T* w, const T* grad,                \
                                                     const T* residual, T* dx, int cols, float eps) {      \
        rms_norm_backward<T>(x, w, grad, residual, dx, cols, eps);                                         \
    }
EMBER_NORM_KERNELS(float, f32)
EMBER_NORM_KERNELS(bf16, bf16)
