// Element-wise kernels: token embeddings, the gated GELU of the MLP and its backward, LoRA
// dropout, and casts.

// Grid-stride over `n` elements: `eight(i)` for elements i..i+8 (16-byte accesses; buffers are
// 16-byte aligned), then `one(i)` for the last `n % 8`.
template <typename Eight, typename One>
__device__ __forceinline__ void for_each_8(long n, Eight eight, One one) {
    const long stride = (long)gridDim.x * blockDim.x, first = (long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long i = 8 * first; i + 8 <= n; i += 8 * stride) eight(i);
    for (long i = n / 8 * 8 + first; i < n; i += stride) one(i);
}

// p = round(gelu(g)) · u, rounded: the activation is evaluated in f32 and stored in T before the
// product, as the reference does.
__device__ __forceinline__ float geglu_one(float g, float u, int erf_gelu, bool bf) {
    const float act = gelu(g, erf_gelu);
    return (bf ? round_to<bf16>(act) : act) * u;
}

template <typename T>
__device__ void geglu(const T* g, const T* u, T* p, long n, int erf_gelu) {
    constexpr bool bf = sizeof(T) == 2;
    for_each_8(n, [&](long i) {
        float gv[8], uv[8];
        load8(g + i, gv);
        load8(u + i, uv);
#pragma unroll
        for (int j = 0; j < 8; ++j) gv[j] = geglu_one(gv[j], uv[j], erf_gelu, bf);
        store8(p + i, gv);
    }, [&](long i) { p[i] = from_f32<T>(geglu_one(to_f32(g[i]), to_f32(u[i]), erf_gelu, bf)); });
}

// dg = gelu'(g) · round(dp · u), du = dp · round(gelu(g)). May write over `g` and `u`.
template <typename T>
__device__ __forceinline__ void geglu_grad_one(float dp, float g, float u, int erf_gelu, float* dg, float* du) {
    const float act = round_to<T>(gelu(g, erf_gelu));
    const float d_act = round_to<T>(dp * u);
    *du = dp * act;
    *dg = gelu_grad(g, erf_gelu) * d_act;
}

template <typename T>
__device__ void geglu_backward(const T* dp, const T* g, const T* u, T* dg, T* du, long n, int erf_gelu) {
    for_each_8(n, [&](long i) {
        float dpv[8], gv[8], uv[8];
        load8(dp + i, dpv);
        load8(g + i, gv);
        load8(u + i, uv);
#pragma unroll
        for (int j = 0; j < 8; ++j) geglu_grad_one<T>(dpv[j], gv[j], uv[j], erf_gelu, &gv[j], &uv[j]);
        store8(dg + i, gv);
        store8(du + i, uv);
    }, [&](long i) {
        float a, b;
        geglu_grad_one<T>(to_f32(dp[i]), to_f32(g[i]), to_f32(u[i]), erf_gelu, &a, &b);
        dg[i] = from_f32<T>(a);
        du[i] = from_f32<T>(b);
    });
}

// LoRA dropout: out = x · keep / keep_prob (or out + that, with `accumulate`), `keep` the
// drawn mask of 0/1 in f32. The reference computes in f32 and rounds once to T.
__device__ __forceinline__ float dropped(float x, float keep, float keep_prob) { return x * keep / keep_prob; }

template <typename T>
__device__ void dropout(const T* x, const float* keep, T* out, long n, float keep_prob, int accumulate) {
    for_each_8(n, [&](long i) {
        float xv[8], kv[8], ov[8];
        load8(x + i, xv);
        load8(keep + i, kv);
        if (accumulate) load8(out + i, ov);
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[j] = (accumulate ? ov[j] : 0.0f) + dropped(xv[j], kv[j], keep_prob);
        store8(out + i, xv);
    }, [&](long i) {
        const float v = dropped(to_f32(x[i]), keep[i], keep_prob);
        out[i] = from_f32<T>(accumulate ? to_f32(out[i]) + v : v);
    });
}

// out[t] = table[ids[t]] · scale, rounded to T: one block per token. `scale` is sqrt(hidden)
// already rounded to T, as transformers multiplies by a scalar tensor of the model dtype.
template <typename T>
__device__ void embed(const int* ids, const T* table, T* out, int hidden, float scale) {
    const T* row = table + (long)ids[blockIdx.x] * hidden;
    T* dst = out + (long)blockIdx.x * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = from_f32<T>(to_f32(row[j]) * scale);
}

#define EMBER_ELEMENTWISE_KERNELS(T, S)                                                                    \
    extern "C" __global__ void embed_##S(const int* ids, const T* table, T* out, int hidden, float scale) { \
        embed<T>(ids, table, out, hidden, scale);                                                          \
    }                                                                                                      \
    extern "C" __global__ void geglu_##S(const T* g, const T* u, T* p, long n, int erf_gelu) {             \
        geglu<T>(g, u, p, n, erf_gelu);                                                                    \
    }                                                                                                      \
    extern "C" __global__ void geglu_backward_##S(const T* dp, const T* g, const T* u, T* dg, T* du,      \
                                                  long n, int erf_gelu) {                                  \
        geglu_backward<T>(dp, g, u, dg, du, n, erf_gelu);                                                  \
    }                                                                                                      \
    extern "C" __global__ void dropout_##S(const T* x, const float* keep, T* out, long n, float keep_prob, \
                                           int accumulate) {                                               \
        dropout<T>(x, keep, out, n, keep_prob, accumulate);                                                \
    }
EMBER_ELEMENTWISE_KERNELS(float, f32)
EMBER_ELEMENTWISE_KERNELS(bf16, bf16)

// Copies of f32 tensors into one destination of type T, each at its own offset: the adapters'
// matrices packed for a step in one launch. `table` holds, per copy, {src pointer, dst element
// offset, element count, scale} as four 64-bit words (the scale as f64 bits).
template <typename T>
__device__ void pack_f32(const unsigned long long* table, int copies, T* dst) {
    for (int c = blockIdx.y; c < copies; c += gridDim.y) {
        const float* src = (const float*)table[4 * c];
        const long offset = (long)table[4 * c + 1], n = (long)table[4 * c + 2];
        const float scale = (float)__longlong_as_double((long long)table[4 * c + 3]);
        for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
            dst[offset + i] = from_f32<T>(src[i] * scale);
    }
}
extern "C" __global__ void pack_f32_f32(const unsigned long long* table, int copies, float* dst) {
    pack_f32<float>(table, copies, dst);
}
extern "C" __global__ void pack_f32_bf16(const unsigned long long* table, int copies, bf16* dst) {
    pack_f32<bf16>(table, copies, dst);
}
