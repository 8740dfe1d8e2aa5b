// Shared helpers of Ember's CUDA kernels. Self-contained (no CUDA headers): NVRTC compiles it
// as is. Element types: `float` and `bf16` (raw bfloat16 bits); every kernel exists in both.

typedef unsigned short bf16;
typedef unsigned int u32;

#define EMBER_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// `x` rounded to T and back: what storing an intermediate in T does in the reference.
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }

// Two f32 values as a bf16x2 register, `lo` in the low half.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

struct __attribute__((aligned(16))) u32x4 {
    u32 x, y, z, w;
};

// Eight consecutive values as f32, in one 16-byte access for bf16 (two for f32): memory-bound
// kernels need wide accesses to reach the card's bandwidth. `p` is 16-byte aligned.
__device__ __forceinline__ void load8(const bf16* p, float* out) {
    const u32x4 v = *(const u32x4*)p;
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        out[2 * j] = __uint_as_float(w[j] << 16);
        out[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
}

__device__ __forceinline__ void load8(const float* p, float* out) {
    const u32x4 a = ((const u32x4*)p)[0], b = ((const u32x4*)p)[1];
    const u32 w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = __uint_as_float(w[j]);
}

__device__ __forceinline__ void store8(bf16* p, const float* v) {
    *(u32x4*)p = {pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7])};
}

__device__ __forceinline__ void store8(float* p, const float* v) {
    ((u32x4*)p)[0] = {__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])};
    ((u32x4*)p)[1] = {__float_as_uint(v[4]), __float_as_uint(v[5]), __float_as_uint(v[6]), __float_as_uint(v[7])};
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -EMBER_INF;
    return warp_max(v);
}

// tanh-approximated GELU and its derivative, in f32 (what transformers' gelu_pytorch_tanh and
// burn's gelu_approximate compute); `erf_gelu` selects the exact form.
__device__ __forceinline__ float gelu(float x, int erf_gelu) {
    if (erf_gelu) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    const float c = 0.79788456080286536f, k = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(c * (x + k * x * x * x)));
}

__device__ __forceinline__ float gelu_grad(float x, int erf_gelu) {
    if (erf_gelu) {
        const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        return cdf + x * expf(-0.5f * x * x) * 0.39894228040143268f;
    }
    const float c = 0.79788456080286536f, k = 0.044715f;
    const float x2 = x * x;
    const float t = tanhf(c * (x + k * x * x2));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * k * x2);
}

// Whether query `q` may attend to key `k` (sequence indices within one row of the batch):
// causal, within the sliding window (0 = none), same non-padding segment.
__device__ __forceinline__ bool attend_allowed(int q, int k, int seg_q, int seg_k, int window) {
    return k <= q && seg_q == seg_k && seg_k != 0 && (window == 0 || q - k < window);
}
