// Straightforward attention, forward and backward, in f32 arithmetic on T inputs: the f32
// path's attention, and the reference the fused kernels are checked against. Queries, keys and
// values are rows of the projections' outputs (`[tokens, heads·head_dim]`); `segs` holds each
// token's segment (0 = padding). A fully masked query row outputs zeros and its logsumexp is
// +inf (so its probabilities are 0 in the backward). Scores and probabilities of one row live in
// dynamic shared memory.

struct AttnShape {
    int seq, heads, kv_heads, head_dim, window;
    float scale, cap;  // cap 0 = no soft-capping
};

// Kernels take the shape as scalars (`ATTN_PARAMS`) and rebuild it (`ATTN_SHAPE`).
#define ATTN_PARAMS int seq, int heads, int kv_heads, int head_dim, int window, float scale, float cap
#define ATTN_SHAPE {seq, heads, kv_heads, head_dim, window, scale, cap}

template <typename T>
__device__ __forceinline__ float dot_rows(const T* a, const T* b, int n) {
    float s = 0.0f;
    for (int d = 0; d < n; ++d) s += to_f32(a[d]) * to_f32(b[d]);
    return s;
}

// Soft-capped, scaled score and the soft-cap's derivative factor.
__device__ __forceinline__ float final_score(float raw, const AttnShape& a, float* dcap) {
    float s = raw * a.scale;
    *dcap = 1.0f;
    if (a.cap != 0.0f) {
        const float t = tanhf(s / a.cap);
        s = t * a.cap;
        *dcap = 1.0f - t * t;
    }
    return s;
}

// grid (seq, heads, batch)
template <typename T>
__device__ void naive_forward(const T* q, const T* k, const T* v, T* o, float* lse, const int* segs, AttnShape a) {
    extern __shared__ float p[];
    __shared__ float scratch[32];
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (a.heads / a.kv_heads);
    const long tokens = (long)gridDim.z * a.seq;
    const long row = (long)b * a.seq + t;
    const int qw = a.heads * a.head_dim, kw = a.kv_heads * a.head_dim;
    const T* qp = q + row * qw + h * a.head_dim;
    const int seg_q = segs[row];
    float mx = -EMBER_INF, dcap;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        const long krow = (long)b * a.seq + j;
        float s = -EMBER_INF;
        if (attend_allowed(t, j, seg_q, segs[krow], a.window))
            s = final_score(dot_rows(qp, k + krow * kw + hk * a.head_dim, a.head_dim), a, &dcap);
        p[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        const float e = mx == -EMBER_INF ? 0.0f : expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (threadIdx.x == 0) lse[h * tokens + row] = sum > 0.0f ? mx + logf(sum) : EMBER_INF;
    for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= t; ++j) acc += p[j] * to_f32(v[((long)b * a.seq + j) * kw + hk * a.head_dim + d]);
        o[row * qw + h * a.head_dim + d] = from_f32<T>(acc * inv);
    }
}

// D = rowsum(dO ∘ O) per (head, token), in f32; one warp per (token, head). Shared by both
// backward paths.
template <typename T>
__device__ void attention_row_dot(const T* o, const T* d_o, float* dots, long tokens, int heads, int head_dim) {
    const long warp = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= tokens * heads) return;
    const long row = warp / heads;
    const int h = warp % heads;
    const long base = row * heads * head_dim + h * head_dim;
    float s = 0.0f;
    for (int d = lane; d < head_dim; d += 32) s += to_f32(o[base + d]) * to_f32(d_o[base + d]);
    s = warp_sum(s);
    if (lane == 0) dots[h * tokens + row] = s;
}

// dQ; grid (seq, heads, batch).
template <typename T>
__device__ void naive_backward_dq(const T* q, const T* k, const T* v, const T* d_o, const float* lse, const float* dots,
                                  T* dq, const int* segs, AttnShape a) {
    extern __shared__ float ds[];
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (a.heads / a.kv_heads);
    const long tokens = (long)gridDim.z * a.seq;
    const long row = (long)b * a.seq + t;
    const int qw = a.heads * a.head_dim, kw = a.kv_heads * a.head_dim;
    const T* qp = q + row * qw + h * a.head_dim;
    const T* dop = d_o + row * qw + h * a.head_dim;
    const float l = lse[h * tokens + row], dd = dots[h * tokens + row];
    const int seg_q = segs[row];
    float dcap;
    for (int j = threadIdx.x; j < a.seq; j += blockDim.x) {
        const long krow = (long)b * a.seq + j;
        float g = 0.0f;
        if (attend_allowed(t, j, seg_q, segs[krow], a.window)) {
            const float s = final_score(dot_rows(qp, k + krow * kw + hk * a.head_dim, a.head_dim), a, &dcap);
            const float pr = expf(s - l);
            const float dp = dot_rows(dop, v + krow * kw + hk * a.head_dim, a.head_dim);
            g = pr * (dp - dd) * dcap * a.scale;
        }
        ds[j] = g;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= t; ++j) acc += ds[j] * to_f32(k[((long)b * a.seq + j) * kw + hk * a.head_dim + d]);
        dq[row * qw + h * a.head_dim + d] = from_f32<T>(acc);
    }
}

// dK and dV, summed over the query heads of the key's group; grid (seq, kv_heads, batch).
template <typename T>
__device__ void naive_backward_dkdv(const T* q, const T* k, const T* v, const T* d_o, const float* lse,
                                    const float* dots, T* dk, T* dv, const int* segs, AttnShape a) {
    extern __shared__ float shared[];
    const int group = a.heads / a.kv_heads;
    float* pr = shared;                       // [group · seq]
    float* ds = shared + group * a.seq;       // [group · seq]
    const int j = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    const long tokens = (long)gridDim.z * a.seq;
    const long krow = (long)b * a.seq + j;
    const int qw = a.heads * a.head_dim, kw = a.kv_heads * a.head_dim;
    const T* kp = k + krow * kw + hk * a.head_dim;
    const T* vp = v + krow * kw + hk * a.head_dim;
    const int seg_k = segs[krow];
    float dcap;
    for (int i = threadIdx.x; i < group * a.seq; i += blockDim.x) {
        const int h = hk * group + i / a.seq, t = i % a.seq;
        const long row = (long)b * a.seq + t;
        float p_ = 0.0f, g = 0.0f;
        if (attend_allowed(t, j, segs[row], seg_k, a.window)) {
            const float s = final_score(dot_rows(q + row * qw + h * a.head_dim, kp, a.head_dim), a, &dcap);
            p_ = expf(s - lse[h * tokens + row]);
            const float dp = dot_rows(d_o + row * qw + h * a.head_dim, vp, a.head_dim);
            g = p_ * (dp - dots[h * tokens + row]) * dcap * a.scale;
        }
        pr[i] = p_;
        ds[i] = g;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
        float acc_k = 0.0f, acc_v = 0.0f;
        for (int i = 0; i < group * a.seq; ++i) {
            const int h = hk * group + i / a.seq, t = i % a.seq;
            if (t < j) continue;
            const long off = ((long)b * a.seq + t) * qw + h * a.head_dim + d;
            acc_k += ds[i] * to_f32(q[off]);
            acc_v += pr[i] * to_f32(d_o[off]);
        }
        dk[krow * kw + hk * a.head_dim + d] = from_f32<T>(acc_k);
        dv[krow * kw + hk * a.head_dim + d] = from_f32<T>(acc_v);
    }
}

#define EMBER_NAIVE_ATTENTION_KERNELS(T, S)                                                                    \
    extern "C" __global__ void attention_naive_forward_##S(const T* q, const T* k, const T* v, T* o,           \
                                                           float* lse, const int* segs, ATTN_PARAMS) {         \
        naive_forward<T>(q, k, v, o, lse, segs, ATTN_SHAPE);                                                   \
    }                                                                                                          \
    extern "C" __global__ void attention_row_dot_##S(const T* o, const T* d_o, float* dots, long tokens,       \
                                                     int heads, int head_dim) {                                \
        attention_row_dot<T>(o, d_o, dots, tokens, heads, head_dim);                                           \
    }                                                                                                          \
    extern "C" __global__ void attention_naive_backward_dq_##S(const T* q, const T* k, const T* v,             \
                                                               const T* d_o, const float* lse,                 \
                                                               const float* dots, T* dq, const int* segs,      \
                                                               ATTN_PARAMS) {                                  \
        naive_backward_dq<T>(q, k, v, d_o, lse, dots, dq, segs, ATTN_SHAPE);                                   \
    }                                                                                                          \
    extern "C" __global__ void attention_naive_backward_dkdv_##S(const T* q, const T* k, const T* v,           \
                                                                 const T* d_o, const float* lse,               \
                                                                 const float* dots, T* dk, T* dv,              \
                                                                 const int* segs, ATTN_PARAMS) {               \
        naive_backward_dkdv<T>(q, k, v, d_o, lse, dots, dk, dv, segs, ATTN_SHAPE);                             \
    }
EMBER_NAIVE_ATTENTION_KERNELS(float, f32)
EMBER_NAIVE_ATTENTION_KERNELS(bf16, bf16)
