// Cross-entropy of a chunk of LM-head logits, written over the logits as their gradient: one
// block per row. The final soft-cap (Gemma 2) is applied in T as the reference does
// (`tanh(l / cap) · cap`, each op rounded); log-softmax runs in f32. The gradient of
// `loss / normaliser` is `(softmax − one-hot) / normaliser` (0 on ignored rows), times the
// soft-cap's `1 − tanh²`, in T.

template <typename T>
__device__ __forceinline__ float capped(float l, float cap, float* t_out) {
    if (cap == 0.0f) return l;
    const float t = round_to<T>(tanhf(round_to<T>(l / cap)));
    *t_out = t;
    return round_to<T>(t * cap);
}

// `f(i, value)` for each element of a row of `n`, eight at a time with 16-byte loads when `n`
// is a multiple of 8 (rows then stay 16-byte aligned), else one at a time.
template <typename T, typename F>
__device__ __forceinline__ void for_row(const T* row, int n, F f) {
    if (n % 8 == 0) {
        for (int c = 8 * threadIdx.x; c < n; c += 8 * blockDim.x) {
            float v[8];
            load8(row + c, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) f(c + j, v[j]);
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) f(i, to_f32(row[i]));
    }
}

// Two passes over the row: max and sum of exponentials together (online, rescaling the sum when
// the max grows), then the gradient written over the logits.
template <typename T>
__device__ void cross_entropy(T* logits, const int* targets, float* losses, int vocab, float cap, float inv_norm) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    T* l = logits + row * (long)vocab;
    const int target = targets[row];
    float mx = -EMBER_INF, sum = 0.0f;
    for_row(l, vocab, [&](int, float v) {
        float t;
        const float z = capped<T>(v, cap, &t);
        if (z > mx) {
            sum = sum * expf(mx - z) + 1.0f;
            mx = z;
        } else {
            sum += expf(z - mx);
        }
    });
    const float row_max = block_max(mx, scratch);
    sum = mx == -EMBER_INF ? 0.0f : sum * expf(mx - row_max);
    const float lse = row_max + logf(block_sum(sum, scratch));
    if (threadIdx.x == 0) {
        float t;
        losses[row] = target < 0 ? 0.0f : lse - capped<T>(to_f32(l[target]), cap, &t);
    }
    __syncthreads();  // the target's logit is read above before any thread overwrites it
    const float scale = target < 0 ? 0.0f : inv_norm;
    auto grad = [&](int i, float v) {
        float t;
        const float z = capped<T>(v, cap, &t);
        float g = round_to<T>((expf(z - lse) - (i == target ? 1.0f : 0.0f)) * scale);
        if (cap != 0.0f) g = g * round_to<T>(1.0f - round_to<T>(t * t));
        return g;
    };
    if (vocab % 8 == 0) {
        for (int c = 8 * threadIdx.x; c < vocab; c += 8 * blockDim.x) {
            float v[8];
            load8(l + c, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = grad(c + j, v[j]);
            store8(l + c, v);
        }
    } else {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) l[i] = from_f32<T>(grad(i, to_f32(l[i])));
    }
}

extern "C" __global__ void cross_entropy_f32(float* logits, const int* targets, float* losses, int vocab, float cap,
                                             float inv_norm) {
    cross_entropy<float>(logits, targets, losses, vocab, cap, inv_norm);
}
extern "C" __global__ void cross_entropy_bf16(bf16* logits, const int* targets, float* losses, int vocab, float cap,
                                              float inv_norm) {
    cross_entropy<bf16>(logits, targets, losses, vocab, cap, inv_norm);
}

// The final soft-cap alone, in place over `n` logits (generation and logit checks), rounded as
// the loss above rounds it.
template <typename T>
__device__ void softcap(T* logits, long n, float cap) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float t;
        logits[i] = from_f32<T>(capped<T>(to_f32(logits[i]), cap, &t));
    }
}

extern "C" __global__ void softcap_f32(float* logits, long n, float cap) { softcap<float>(logits, n, cap); }
extern "C" __global__ void softcap_bf16(bf16* logits, long n, float cap) { softcap<bf16>(logits, n, cap); }
