// Gemma's RMSNorm `x / rms(x) * (1 + w)` in f32, its backward for a frozen weight, and the
// residual + norm pairs of a decoder layer, one row per block.

// y = norm(x); rows of `cols`.
template <typename T>
__device__ void rms_norm(const T* x, const T* w, T* y, int cols, float eps) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * cols;
    y += row * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_f32(x[i]);
        ss += v * v;
    }
    const float r = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        y[i] = from_f32<T>(to_f32(x[i]) * r * (to_f32(w[i]) + 1.0f));
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
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const float v = to_f32(z[i]);
            ss += v * v;
        }
        r = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = to_f32(z[i]);
        if (w_post) v = round_to<T>(v * r * (to_f32(w_post[i]) + 1.0f));
        const float hv = round_to<T>(to_f32(x[i]) + v);
        h[i] = from_f32<T>(hv);
        row_h[i] = hv;
        ss += hv * hv;
    }
    if (!w_next) return;
    const float rh = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    m += row * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) m[i] = from_f32<T>(row_h[i] * rh * (to_f32(w_next[i]) + 1.0f));
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
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_f32(x[i]);
        ss += v * v;
    }
    const float r = 1.0f / sqrtf(block_sum(ss, scratch) / cols + eps);
    float dot = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        dot += to_f32(grad[i]) * (to_f32(w[i]) + 1.0f) * to_f32(x[i]) * r;
    dot = block_sum(dot, scratch) / cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float n = to_f32(x[i]) * r;
        const float g = to_f32(grad[i]) * (to_f32(w[i]) + 1.0f);
        float v = round_to<T>(r * (g - n * dot));
        if (residual) v = round_to<T>(to_f32(residual[i]) + v);
        dx[i] = from_f32<T>(v);
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
