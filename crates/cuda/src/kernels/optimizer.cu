// The optimizer step of 8-bit AdamW in two launches: the squared norm of every gradient tensor,
// then bitsandbytes' `kOptimizerStatic8bit2StateBlockwise` over all tensors at once, with the
// arithmetic in the order of `ember_trainer`'s reference (its burn ops, checked against bnb).
// Tensors are f32 and listed in a table; in the packed state each starts at a multiple of 256.
// Every operation is an explicitly rounded intrinsic: the reference runs one kernel per
// operation, so a fused multiply-add here would differ from it in the last bit.

typedef unsigned char u8;
typedef unsigned long long u64;

// Σ x² of tensor `blockIdx.x`; `table` holds {pointer, length} per tensor.
extern "C" __global__ void sum_squares_f32(const u64* table, float* sums) {
    __shared__ float scratch[32];
    const float* x = (const float*)table[2 * blockIdx.x];
    const long n = (long)table[2 * blockIdx.x + 1];
    float s = 0.0f;
    for (long i = threadIdx.x; i < n; i += blockDim.x) s = fmaf(x[i], x[i], s);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) sums[blockIdx.x] = s;
}

// bnb's `quantize_2D` (see `DynamicMap::nearest` in crates/trainer/src/optim/quant.rs): a binary
// search of the sorted map from index 127 down to a leaf p, then the nearer of p and its
// neighbour on x's side by their midpoint; NaN ends at code 0.
__device__ __forceinline__ int nearest_code(const float* map, float below, float x) {
    int pivot = 127;
    bool above = x > map[127];
#pragma unroll
    for (int half = 64; half >= 2; half >>= 1) {
        pivot += above ? half : -half;
        above = x > map[pivot];
    }
    pivot += above ? 1 : -1;
    const float value = map[pivot];
    above = x > value;
    const float neighbour = above ? map[pivot + 1] : (pivot == 0 ? below : map[pivot - 1]);
    const float midpoint = __fmul_rn(__fadd_rn(neighbour, value), 0.5f);
    const int up = above && x > midpoint, down = !above && x < midpoint;
    return max(pivot + up - down, 0);
}

// One block of 256 threads per block of the packed state. `table` holds, per tensor,
// {param, grad, new param (packed output), length, offset}; `maps` the signed then the unsigned
// dynamic map. Slots past a tensor's end load gradient 0 and take codes 128 and 0 back after.
extern "C" __global__ void __launch_bounds__(256) adamw8bit_blockwise(
    const u64* table, int tensors, const float* maps, const u8* codes1, const u8* codes2, const float* absmax1,
    const float* absmax2, u8* new_codes1, u8* new_codes2, float* new_absmax1, float* new_absmax2, float beta1,
    float beta2, float one_minus_beta1, float one_minus_beta2, float eps, float step_size, float decay,
    float grad_scale) {
    __shared__ float map1[256], map2[256], scratch[32];
    map1[threadIdx.x] = maps[threadIdx.x];
    map2[threadIdx.x] = maps[256 + threadIdx.x];
    // The tensor this block belongs to: the last whose offset is at most the block's start.
    const long start = (long)blockIdx.x * 256;
    int lo = 0, hi = tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if ((long)table[5 * mid + 4] <= start) lo = mid;
        else hi = mid - 1;
    }
    const u64* t = table + 5 * lo;
    const long i = start + threadIdx.x - (long)t[4];
    const bool in = i < (long)t[3];
    const long slot = start + threadIdx.x;
    float g = in ? ((const float*)t[1])[i] : 0.0f;
    if (grad_scale < 1.0f) g = __fmul_rn(g, grad_scale);
    const float old = in ? ((const float*)t[0])[i] : 0.0f;
    __syncthreads();

    float m = __fmul_rn(map1[codes1[slot]], absmax1[blockIdx.x]);
    float v = __fmul_rn(map2[codes2[slot]], absmax2[blockIdx.x]);
    const bool skip = !isfinite(g);
    v = skip ? 0.0f : __fadd_rn(__fmul_rn(v, beta2), __fmul_rn(__fmul_rn(g, one_minus_beta2), g));
    m = skip ? 0.0f : __fadd_rn(__fmul_rn(m, beta1), __fmul_rn(g, one_minus_beta1));
    float p = __fadd_rn(old, __fmul_rn(__fdiv_rn(m, __fadd_rn(__fsqrt_rn(v), eps)), step_size));
    if (decay != 1.0f) p = __fmul_rn(p, decay);
    if (skip) p = old;
    if (in) ((float*)t[2])[i] = p;

    const float a1 = block_max(fabsf(m), scratch);
    const float a2 = block_max(fabsf(v), scratch);
    int c1 = nearest_code(map1, -1.0f, __fdiv_rn(m, a1));
    // A code on the other side of zero than the state moves one step towards its sign,
    // wrapping as bnb's unsigned char does (-0.0 counts as negative: 1/-0 is -inf).
    const bool code_negative = c1 < 127, value_negative = __fdiv_rn(1.0f, m) < 0.0f;
    if (code_negative != value_negative) c1 = (c1 + (m > 0.0f ? 1 : -1) + 256) % 256;
    const int c2 = nearest_code(map2, 0.0f, __fdiv_rn(v, a2));
    new_codes1[slot] = in ? (u8)c1 : (u8)128;
    new_codes2[slot] = in ? (u8)c2 : (u8)0;
    if (threadIdx.x == 0) {
        new_absmax1[blockIdx.x] = a1;
        new_absmax2[blockIdx.x] = a2;
    }
}
