// Attention of new tokens against the KV cache, for generation. Token `row` belongs to sequence
// `segments[row] - 1` (each sequence has its own cache, `seq_stride` elements apart), sits at
// position `positions[row]` and attends to that cache's positions `lo..=positions[row]` (the
// sliding window's `lo`, else 0). Positions and sequences are read from the device, so a step's
// launches are the same at every token.
//
// One block of 256 threads per (new token, head, split): a decoding step has few tokens, so the
// keys are split `splits` ways (flash-decoding) to give the card enough blocks; each split writes
// its running max, sum and unnormalised output (f32) to `partials`, which attention_decode_combine
// merges. With one split the block writes the output directly. Scores in f32 (soft-capped when
// `cap` is set), softmax online over tiles of keys. Each warp takes every eighth key of a tile,
// its lanes splitting the head dimension (coalesced reads of a key or value row); the warps'
// partial outputs are summed at the end.
#define DECODE_TILE 1024
#define DECODE_WARPS 8

template <typename T>
__device__ void attention_decode(const T* q, const T* k, const T* v, T* o, float* partials, const int* positions,
                                 const int* segments, long seq_stride, int heads, int kv_heads, int head_dim,
                                 int window, float scale, float cap) {
    __shared__ float qs[256];
    __shared__ float p[DECODE_TILE];
    __shared__ float scratch[32];
    __shared__ float partial[DECODE_WARPS][256];
    const int row = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int kvh = h / (heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pos = positions[row];
    k += (long)(segments[row] - 1) * seq_stride;
    v += (long)(segments[row] - 1) * seq_stride;
    const int first = window > 0 ? max(0, pos - window + 1) : 0;
    const int per_split = (pos + 1 - first + splits - 1) / splits;
    const int lo = first + split * per_split, hi = min(pos + 1, lo + per_split);  // keys lo..hi-1
    const long q_stride = (long)heads * head_dim, kv_stride = (long)kv_heads * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = to_f32(q[row * q_stride + h * head_dim + d]);
    __syncthreads();
    float acc[8];  // dimensions lane + 32 i
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    float m = -EMBER_INF, sum = 0.0f;
    for (int t0 = lo; t0 < hi; t0 += DECODE_TILE) {
        const int n = min(DECODE_TILE, hi - t0);
        float tile_max = -EMBER_INF;
        for (int j = warp; j < n; j += DECODE_WARPS) {
            const T* key = k + (long)(t0 + j) * kv_stride + kvh * head_dim;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int d = lane + 32 * i;
                if (d < head_dim) s += qs[d] * to_f32(key[d]);
            }
            s = warp_sum(s) * scale;
            if (cap != 0.0f) s = tanhf(s / cap) * cap;
            if (lane == 0) p[j] = s;
            tile_max = fmaxf(tile_max, s);
        }
        const float m_new = fmaxf(m, block_max(tile_max, scratch));  // its barriers publish p
        const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
        float part = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const float e = expf(p[j] - m_new);
            p[j] = e;
            part += e;
        }
        sum = sum * alpha + block_sum(part, scratch);  // its barriers publish p
        m = m_new;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] *= alpha;
        for (int j = warp; j < n; j += DECODE_WARPS) {
            const float pj = p[j];
            const T* value = v + (long)(t0 + j) * kv_stride + kvh * head_dim;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int d = lane + 32 * i;
                if (d < head_dim) acc[i] += pj * to_f32(value[d]);
            }
        }
        __syncthreads();  // the next tile writes p
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int d = lane + 32 * i;
        if (d < head_dim) partial[warp][d] = acc[i];
    }
    __syncthreads();
    // A split's record: max, sum, then head_dim outputs (an empty split: -inf, 0, zeros).
    float* record = partials + (((long)row * heads + h) * splits + split) * (head_dim + 2);
    if (splits > 1 && threadIdx.x == 0) {
        record[0] = m;
        record[1] = sum;
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float total = 0.0f;
        for (int w = 0; w < DECODE_WARPS; ++w) total += partial[w][d];
        if (splits > 1) {
            record[2 + d] = total;
        } else {
            o[row * q_stride + h * head_dim + d] = from_f32<T>(total / sum);
        }
    }
}

// Merges the splits' records of attention_decode: one block per (new token, head), a thread per
// dimension.
template <typename T>
__device__ void attention_decode_combine(const float* partials, T* o, int heads, int head_dim, int splits) {
    const int row = blockIdx.x, h = blockIdx.y;
    const float* records = partials + ((long)row * heads + h) * splits * (head_dim + 2);
    float m = -EMBER_INF;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, records[s * (head_dim + 2)]);
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += records[s * (head_dim + 2) + 1] * expf(records[s * (head_dim + 2)] - m);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float total = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float* r = records + s * (head_dim + 2);
            total += r[2 + d] * expf(r[0] - m);
        }
        o[(long)row * heads * head_dim + h * head_dim + d] = from_f32<T>(total / sum);
    }
}

// Appends a step's keys and values (`[tokens, row]` each) to their sequences' caches, each token
// at its position: one block per token.
template <typename T>
__device__ void kv_append(const T* k_new, const T* v_new, T* k, T* v, const int* positions, const int* segments,
                          long seq_stride, int row) {
    const int t = blockIdx.x;
    const long at = (long)(segments[t] - 1) * seq_stride + (long)positions[t] * row;
    for (int i = threadIdx.x; i < row; i += blockDim.x) {
        k[at + i] = k_new[(long)t * row + i];
        v[at + i] = v_new[(long)t * row + i];
    }
}

#define EMBER_DECODE_KERNEL(S, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_decode_##S(                                \
        const T* q, const T* k, const T* v, T* o, float* partials, const int* positions, const int* segments, \
        long seq_stride, int heads, int kv_heads, int head_dim, int window, float scale, float cap) {      \
        attention_decode<T>(q, k, v, o, partials, positions, segments, seq_stride, heads, kv_heads, head_dim, \
                            window, scale, cap);                                                           \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) attention_decode_combine_##S(                        \
        const float* partials, T* o, int heads, int head_dim, int splits) {                                \
        attention_decode_combine<T>(partials, o, heads, head_dim, splits);                                 \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) kv_append_##S(                                       \
        const T* k_new, const T* v_new, T* k, T* v, const int* positions, const int* segments,             \
        long seq_stride, int row) {                                                                        \
        kv_append<T>(k_new, v_new, k, v, positions, segments, seq_stride, row);                            \
    }
EMBER_DECODE_KERNEL(f32, float)
EMBER_DECODE_KERNEL(bf16, bf16)
