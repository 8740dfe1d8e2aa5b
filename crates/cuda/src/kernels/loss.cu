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

template <typename T>
__device__ void cross_entropy(T* logits, const int* targets, float* losses, int vocab, float cap, float inv_norm) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    T* l = logits + row * (long)vocab;
    const int target = targets[row];
    float t;
    float mx = -EMBER_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, capped<T>(to_f32(l[i]), cap, &t));
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(capped<T>(to_f32(l[i]), cap, &t) - mx);
    const float lse = mx + logf(block_sum(sum, scratch));
    if (threadIdx.x == 0)
        losses[row] = target < 0 ? 0.0f : lse - capped<T>(to_f32(l[target]), cap, &t);
    __syncthreads();  // the target's logit is read above before any thread overwrites it
    const float scale = target < 0 ? 0.0f : inv_norm;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float z = capped<T>(to_f32(l[i]), cap, &t);
        float g = round_to<T>((expf(z - lse) - (i == target ? 1.0f : 0.0f)) * scale);
        if (cap != 0.0f) g = g * round_to<T>(1.0f - round_to<T>(t * t));
        l[i] = from_f32<T>(g);
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
