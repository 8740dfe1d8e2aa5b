// Element-wise kernels: the gated GELU of the MLP and its backward, and casts.

// p = round(gelu(g)) · u, rounded: the activation is evaluated in f32 and stored in T before the
// product, as the reference does.
template <typename T>
__device__ void geglu(const T* g, const T* u, T* p, long n, int erf_gelu) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float act = round_to<T>(gelu(to_f32(g[i]), erf_gelu));
        p[i] = from_f32<T>(act * to_f32(u[i]));
    }
}

// dg = gelu'(g) · round(dp · u), du = dp · round(gelu(g)). May write over `g` and `u`.
template <typename T>
__device__ void geglu_backward(const T* dp, const T* g, const T* u, T* dg, T* du, long n, int erf_gelu) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float gv = to_f32(g[i]), uv = to_f32(u[i]), dpv = to_f32(dp[i]);
        const float act = round_to<T>(gelu(gv, erf_gelu));
        const float d_act = round_to<T>(dpv * uv);
        du[i] = from_f32<T>(dpv * act);
        dg[i] = from_f32<T>(gelu_grad(gv, erf_gelu) * d_act);
    }
}

#define EMBER_ELEMENTWISE_KERNELS(T, S)                                                                    \
    extern "C" __global__ void geglu_##S(const T* g, const T* u, T* p, long n, int erf_gelu) {             \
        geglu<T>(g, u, p, n, erf_gelu);                                                                    \
    }                                                                                                      \
    extern "C" __global__ void geglu_backward_##S(const T* dp, const T* g, const T* u, T* dg, T* du,      \
                                                  long n, int erf_gelu) {                                  \
        geglu_backward<T>(dp, g, u, dg, du, n, erf_gelu);                                                  \
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
