// Queries and keys before attention: Gemma 3's per-head RMSNorm (optional), then RoPE in the
// `rotate_half` layout, with the angles `position · inv_freq[i]` computed in f32 and cos/sin
// rounded to T, each product and the sum rounded as transformers' ops round them. One warp per
// (token, head); lane l handles the pairs (i, i + half) for i = l, l + 32, ...

template <typename T>
__device__ void rope(const T* src, T* dst, const T* norm_w, const int* pos, const float* inv_freq, long rows,
                     int heads, int head_dim, float eps) {
    const long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= rows * heads) return;
    const long row = warp / heads;
    const long base = warp * head_dim;  // rows are heads·head_dim wide
    const int half = head_dim >> 1;
    float r = 1.0f;
    if (norm_w) {
        float ss = 0.0f;
        for (int i = lane; i < head_dim; i += 32) {
            const float v = to_f32(src[base + i]);
            ss += v * v;
        }
        r = 1.0f / sqrtf(warp_sum(ss) / head_dim + eps);
    }
    const float p = (float)pos[row];
    for (int i = lane; i < half; i += 32) {
        float x1 = to_f32(src[base + i]), x2 = to_f32(src[base + i + half]);
        if (norm_w) {
            x1 = round_to<T>(x1 * r * (to_f32(norm_w[i]) + 1.0f));
            x2 = round_to<T>(x2 * r * (to_f32(norm_w[i + half]) + 1.0f));
        }
        const float angle = p * inv_freq[i];
        const float c = round_to<T>(cosf(angle)), s = round_to<T>(sinf(angle));
        dst[base + i] = from_f32<T>(round_to<T>(x1 * c) - round_to<T>(x2 * s));
        dst[base + i + half] = from_f32<T>(round_to<T>(x2 * c) + round_to<T>(x1 * s));
    }
}

// The gradient of `src` given the gradient of `dst`: RoPE's transpose, then the norm's backward
// (which needs the un-normed `src`).
template <typename T>
__device__ void rope_backward(const T* grad, const T* src, T* dsrc, const T* norm_w, const int* pos,
                              const float* inv_freq, long rows, int heads, int head_dim, float eps) {
    const long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= rows * heads) return;
    const long row = warp / heads;
    const long base = warp * head_dim;
    const int half = head_dim >> 1;
    const float p = (float)pos[row];
    // Through RoPE: d1 = g1·c + g2·s, d2 = g2·c − g1·s.
    float d[2][8];  // head_dim ≤ 512
    for (int j = 0, i = lane; i < half; i += 32, ++j) {
        const float g1 = to_f32(grad[base + i]), g2 = to_f32(grad[base + i + half]);
        const float angle = p * inv_freq[i];
        const float c = round_to<T>(cosf(angle)), s = round_to<T>(sinf(angle));
        d[0][j] = round_to<T>(round_to<T>(g1 * c) + round_to<T>(g2 * s));
        d[1][j] = round_to<T>(round_to<T>(g2 * c) - round_to<T>(g1 * s));
    }
    if (!norm_w) {
        for (int j = 0, i = lane; i < half; i += 32, ++j) {
            dsrc[base + i] = from_f32<T>(d[0][j]);
            dsrc[base + i + half] = from_f32<T>(d[1][j]);
        }
        return;
    }
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += 32) {
        const float v = to_f32(src[base + i]);
        ss += v * v;
    }
    const float r = 1.0f / sqrtf(warp_sum(ss) / head_dim + eps);
    float dot = 0.0f;
    for (int j = 0, i = lane; i < half; i += 32, ++j) {
        dot += d[0][j] * (to_f32(norm_w[i]) + 1.0f) * to_f32(src[base + i]) * r;
        dot += d[1][j] * (to_f32(norm_w[i + half]) + 1.0f) * to_f32(src[base + i + half]) * r;
    }
    dot = warp_sum(dot) / head_dim;
    for (int j = 0, i = lane; i < half; i += 32, ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int k = i + h * half;
            const float n = to_f32(src[base + k]) * r;
            const float g = d[h][j] * (to_f32(norm_w[k]) + 1.0f);
            dsrc[base + k] = from_f32<T>(r * (g - n * dot));
        }
    }
}

#define EMBER_ROPE_KERNELS(T, S)                                                                         \
    extern "C" __global__ void rope_##S(const T* src, T* dst, const T* norm_w, const int* pos,          \
                                        const float* inv_freq, long rows, int heads, int head_dim,       \
                                        float eps) {                                                     \
        rope<T>(src, dst, norm_w, pos, inv_freq, rows, heads, head_dim, eps);                            \
    }                                                                                                    \
    extern "C" __global__ void rope_backward_##S(const T* grad, const T* src, T* dsrc, const T* norm_w, \
                                                 const int* pos, const float* inv_freq, long rows,       \
                                                 int heads, int head_dim, float eps) {                   \
        rope_backward<T>(grad, src, dsrc, norm_w, pos, inv_freq, rows, heads, head_dim, eps);            \
    }
EMBER_ROPE_KERNELS(float, f32)
EMBER_ROPE_KERNELS(bf16, bf16)
