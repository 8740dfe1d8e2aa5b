// bitsandbytes' 4-bit weights (QLoRA) dequantized for the GEMMs, bit for bit as
// `dequantize_4bit` (and Ember's generic path): each value is `table[code] · absmax` in f32,
// rounded to the dtype the weight was quantized from, then to the run's. With double
// quantization a block's absmax is `map[code8] · nested_absmax + offset`, two roundings as bnb
// computes them (no fused multiply-add). One thread per 8 codes (4 packed bytes).

// `state`: the dtype the weight was quantized from: 0 f32, 1 bf16, 2 f16.
__device__ __forceinline__ float round_state(float x, int state) {
    if (state == 1) return round_to<bf16>(x);
    if (state == 2) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
        float r;
        asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
        return r;
    }
    return x;
}

template <typename T>
__device__ void dequant4(const unsigned char* packed, const float* table, const float* absmax,
                         const unsigned char* absmax_codes, const float* map, float offset, int log2_blocksize,
                         long n, int state, T* out) {
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = 8 * ((long)blockIdx.x * blockDim.x + threadIdx.x); i < n; i += 8 * stride) {
        const u32 word = *(const u32*)(packed + i / 2);
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const long at = i + j;
            const int code = (word >> (8 * (j / 2) + (j % 2 == 0 ? 4 : 0))) & 15;
            const long block = at >> log2_blocksize;
            float scale = absmax[absmax_codes ? block >> 8 : block];
            if (absmax_codes) scale = __fadd_rn(__fmul_rn(map[absmax_codes[block]], scale), offset);
            v[j] = round_state(__fmul_rn(table[code], scale), state);
        }
        if (i + 8 <= n) {
            store8(out + i, v);
        } else {
            for (int j = 0; i + j < n; ++j) out[i + j] = from_f32<T>(v[j]);
        }
    }
}

extern "C" __global__ void dequant4_f32(const unsigned char* packed, const float* table, const float* absmax,
                                        const unsigned char* absmax_codes, const float* map, float offset,
                                        int log2_blocksize, long n, int state, float* out) {
    dequant4<float>(packed, table, absmax, absmax_codes, map, offset, log2_blocksize, n, state, out);
}

extern "C" __global__ void dequant4_bf16(const unsigned char* packed, const float* table, const float* absmax,
                                         const unsigned char* absmax_codes, const float* map, float offset,
                                         int log2_blocksize, long n, int state, bf16* out) {
    dequant4<bf16>(packed, table, absmax, absmax_codes, map, offset, log2_blocksize, n, state, out);
}
