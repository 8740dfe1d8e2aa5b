// Fused attention for bf16 training, FlashAttention-2 style: forward (saving the logsumexp),
// then a dK/dV kernel (one block per key tile and share of the query heads of its group; with
// several shares, each writes f32 partial sums that `attention_flash_sum_splits` adds in a fixed
// order, so the result is deterministic without atomics) and a dQ kernel. Tiles are loaded with
// `cp.async` while the previous stage computes; blocks with the most causal work start first. Tensor
// cores through `mma.sync.m16n8k16` (bf16 in, f32 accumulate), tiles in shared memory swizzled
// by 16-byte chunk (`chunk ^ (row & 7)`) so `ldmatrix` reads are free of bank conflicts.
// Causal, sliding-window and segment masks; key/query tiles that the masks empty entirely are
// skipped using per-32-token segment statistics made on the host (`TileStats`). Needs
// head_dim ∈ {64, 128, 256}; `AttnShape` is in attention_naive.cu.

#define LOG2E 1.4426950408889634f

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void ldmatrix_x4(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// c += a · b for one 16×8 tile (a: 16×16 row-major fragment, b: 16×8 column fragment).
__device__ __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile of `width` bf16.
template <int WIDTH>
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * WIDTH + ((chunk ^ (row & 7)) << 3);
}

// Rows [r0, r0 + ROWS) of a `[tokens, ld]` matrix (columns [0, WIDTH) from `src`) into a
// swizzled tile; rows past `seq` are zeros.
template <int WIDTH, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int ld, int r0, int seq) {
    constexpr int CHUNKS = WIDTH / 8;
    for (int i = threadIdx.x; i < ROWS * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, c = i % CHUNKS;
        u32x4 v = {0u, 0u, 0u, 0u};
        if (r0 + r < seq) v = *(const u32x4*)(src + (long)(r0 + r) * ld + c * 8);
        *(u32x4*)(dst + swz<WIDTH>(r, c)) = v;
    }
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
    // src-size 0 zero-fills the 16 bytes without reading `src`.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(pred ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// `load_tile` through cp.async: the copy lands once this thread's `cp_async_wait_all` returns
// (and, for the other threads' rows, after the barrier that follows it).
template <int WIDTH, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int ld, int r0, int seq) {
    constexpr int CHUNKS = WIDTH / 8;
    for (int i = threadIdx.x; i < ROWS * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, c = i % CHUNKS;
        const bool in = r0 + r < seq;
        cp_async16(dst + swz<WIDTH>(r, c), src + (long)(in ? r0 + r : 0) * ld + c * 8, in);
    }
}

// Segment statistics of a span of 32-token tiles: lowest and highest non-padding segment, and
// whether every token is in range, non-padding and of one segment. `stats` holds, per batch row
// and 32-token tile, {lo, hi, uniform}; lo > hi when the tile is all padding.
struct Span {
    int lo, hi, uniform;
};

__device__ __forceinline__ Span span_stats(const int* stats, int b, int seq, int t0, int len) {
    const int tiles = (seq + 31) / 32;
    Span s = {0x7fffffff, 0, 1};
    for (int t = t0 / 32; t < (t0 + len + 31) / 32 && t < tiles; ++t) {
        const int* st = stats + 3 * (b * tiles + t);
        s.uniform = s.uniform && st[2] && (s.lo == 0x7fffffff || s.lo == st[0]);
        s.lo = min(s.lo, st[0]);
        s.hi = max(s.hi, st[1]);
    }
    if (t0 + len > seq) s.uniform = 0;
    return s;
}

__device__ __forceinline__ bool spans_disjoint(Span q, Span k) {
    return q.lo > q.hi || k.lo > k.hi || k.hi < q.lo || q.hi < k.lo;
}

// Whether no element of the tile pair is masked, so masking can be skipped.
__device__ __forceinline__ bool tile_unmasked(Span q, Span k, int q0, int q_last, int k0, int k_last, int window) {
    return k_last <= q0 && (window == 0 || q_last - k0 < window) && q.uniform && k.uniform && q.lo == k.lo;
}

// The final score (scaled, soft-capped) and the soft-cap's derivative factor.
__device__ __forceinline__ float flash_score(float raw, float scale, float cap, float* dcap) {
    float s = raw * scale;
    *dcap = 1.0f;
    if (cap != 0.0f) {
        const float t = tanhf(s / cap);
        s = t * cap;
        *dcap = 1.0f - t * t;
    }
    return s;
}

// Grids put the tile last, so blocks start in order of their work over all heads and rows,
// the longest (causal: the last query tiles, the first key tiles) first: the last wave then
// holds short blocks, not one long block beside idle SMs.

// ---- forward: grid (heads, batch, query tiles of 64), 4 warps of 16 query rows ----
template <int HD>
__device__ void flash_forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const int* segs,
                              const int* stats, AttnShape a) {
    constexpr int BM = 64, BN = 64, THREADS = 128;
    extern __shared__ __attribute__((aligned(16))) unsigned char smem[];
    bf16* Qs = (bf16*)smem;
    bf16* Ks = Qs + BM * HD;
    bf16* Vs = Ks + BN * HD;
    int* seg_q = (int*)(Vs + BN * HD);
    int* seg_k = seg_q + BM;
    const int h = blockIdx.x, b = blockIdx.y, q0 = (gridDim.z - 1 - blockIdx.z) * BM;
    const int hk = h / (a.heads / a.kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long tokens = (long)gridDim.y * a.seq;
    const int qw = a.heads * HD, kw = a.kv_heads * HD;
    const long first = (long)b * a.seq;
    const int q_last = min(q0 + BM, a.seq) - 1;
    const bf16* k_head = k + first * kw + hk * HD;
    const bf16* v_head = v + first * kw + hk * HD;

    for (int i = threadIdx.x; i < BM; i += THREADS) seg_q[i] = q0 + i < a.seq ? segs[first + q0 + i] : 0;
    const Span sq = span_stats(stats, b, a.seq, q0, BM);

    float acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {-EMBER_INF, -EMBER_INF}, l[2] = {0.0f, 0.0f};

    // The key tiles the masks leave something of, in order.
    const int kt_hi = q_last / BN;
    auto next_live = [&](int kt) {
        for (; kt <= kt_hi; ++kt) {
            const int k_last = min(kt * BN + BN, a.seq) - 1;
            if (a.window && q0 - k_last >= a.window) continue;
            if (!spans_disjoint(sq, span_stats(stats, b, a.seq, kt * BN, BN))) break;
        }
        return kt;
    };
    // K of the next tile loads while P·V of this one computes, V while its scores do.
    load_tile_async<HD, BM, THREADS>(Qs, q + first * qw + h * HD, qw, q0, a.seq);
    int kt = next_live(a.window ? max(0, q0 - a.window + 1) / BN : 0);
    if (kt <= kt_hi) load_tile_async<HD, BN, THREADS>(Ks, k_head, kw, kt * BN, a.seq);
    cp_async_commit();
    while (kt <= kt_hi) {
        const int k0 = kt * BN, k_last = min(k0 + BN, a.seq) - 1;
        const Span sk = span_stats(stats, b, a.seq, k0, BN);
        const bool masked = !tile_unmasked(sq, sk, q0, q_last, k0, k_last, a.window);
        for (int i = threadIdx.x; i < BN; i += THREADS) seg_k[i] = k0 + i < a.seq ? segs[first + k0 + i] : 0;
        cp_async_wait_all();
        __syncthreads();
        load_tile_async<HD, BN, THREADS>(Vs, v_head, kw, k0, a.seq);
        cp_async_commit();

        float s[BN / 8][4];
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 af[4];
            ldmatrix_x4(af, Qs + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                u32 bk[4];
                ldmatrix_x4(bk, Ks + swz<HD>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
                mma(s[2 * np], af, bk[0], bk[1]);
                mma(s[2 * np + 1], af, bk[2], bk[3]);
            }
        }
        float mx[2] = {-EMBER_INF, -EMBER_INF};
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float dcap;
                float x = flash_score(s[n][e], a.scale, a.cap, &dcap) * LOG2E;
                if (masked) {
                    const int r = warp * 16 + (lane >> 2) + (e >> 1) * 8, c = n * 8 + 2 * (lane & 3) + (e & 1);
                    if (q0 + r >= a.seq || k0 + c >= a.seq ||
                        !attend_allowed(q0 + r, k0 + c, seg_q[r], seg_k[c], a.window))
                        x = -EMBER_INF;
                }
                s[n][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2], sub[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_new = fmaxf(m[i], mx[i]);
            alpha[i] = m[i] == -EMBER_INF ? 0.0f : exp2f(m[i] - m_new);
            sub[i] = m_new == -EMBER_INF ? 0.0f : m_new;
            m[i] = m_new;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            acc[n][0] *= alpha[0];
            acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1];
            acc[n][3] *= alpha[1];
        }
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2f(s[n][e] - sub[e >> 1]);
                l[e >> 1] += s[n][e];
            }
        }
        cp_async_wait_all();
        __syncthreads();
        const int next = next_live(kt + 1);
        if (next <= kt_hi) load_tile_async<HD, BN, THREADS>(Ks, k_head, kw, next * BN, a.seq);
        cp_async_commit();
#pragma unroll
        for (int kb = 0; kb < BN / 16; ++kb) {
            const u32 pa[4] = {pack_bf16x2(s[2 * kb][0], s[2 * kb][1]), pack_bf16x2(s[2 * kb][2], s[2 * kb][3]),
                               pack_bf16x2(s[2 * kb + 1][0], s[2 * kb + 1][1]),
                               pack_bf16x2(s[2 * kb + 1][2], s[2 * kb + 1][3])};
#pragma unroll
            for (int dp = 0; dp < HD / 16; ++dp) {
                u32 bv[4];
                ldmatrix_x4_trans(bv, Vs + swz<HD>(kb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 2 + (lane >> 4)));
                mma(acc[2 * dp], pa, bv[0], bv[1]);
                mma(acc[2 * dp + 1], pa, bv[2], bv[3]);
            }
        }
        kt = next;
    }
    cp_async_wait_all();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = warp * 16 + (lane >> 2) + i * 8;
        if (q0 + r >= a.seq) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        bf16* orow = o + (first + q0 + r) * qw + h * HD;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n)
            *(u32*)(orow + n * 8 + 2 * (lane & 3)) = pack_bf16x2(acc[n][2 * i] * inv, acc[n][2 * i + 1] * inv);
        if ((lane & 3) == 0)
            lse[h * tokens + first + q0 + r] = l[i] > 0.0f ? m[i] / LOG2E + logf(l[i]) : EMBER_INF;
    }
}

// ---- dK, dV: grid (kv heads × splits, batch, key tiles of 64), 8 warps ----
// Block (x, y) takes key tile x of kv head y / splits and the query heads of share y % splits of
// its group. Warp w owns keys 16·(w % 4) of the tile; for the scores it takes queries 32·(w / 4)
// of the query tile, for the gradients dimensions (HD/2)·(w / 4). P and dS pass through shared
// memory; Q and dO are double-buffered, the next (head, query tile)'s loading during this one.
// With one share the block writes bf16 dK, dV; with several, f32 partial sums into `part`
// (`[2][splits][tokens, kv_heads·HD]`, dK then dV).
template <int HD>
__device__ void flash_backward_dkdv(const bf16* q, const bf16* k, const bf16* v, const bf16* d_o, const float* lse,
                                    const float* dots, bf16* dk, bf16* dv, float* part, int splits,
                                    const int* segs, const int* stats, AttnShape a) {
    constexpr int BM = 64, BN = 64, THREADS = 256;
    extern __shared__ __attribute__((aligned(16))) unsigned char smem[];
    bf16* Ks = (bf16*)smem;
    bf16* Vs = Ks + BN * HD;
    bf16* Qbuf = Vs + BN * HD;       // two tiles
    bf16* dObuf = Qbuf + 2 * BM * HD;  // two tiles
    bf16* Ps = dObuf + 2 * BM * HD;    // [BN keys][BM queries]
    bf16* dSs = Ps + BN * BM;
    float* lse_s = (float*)(dSs + BN * BM);
    float* dot_s = lse_s + BM;
    int* seg_q = (int*)(dot_s + BM);
    int* seg_k = seg_q + BM;
    const int b = blockIdx.y, hk = blockIdx.x / splits, share = blockIdx.x % splits, k0 = blockIdx.z * BN;
    const int group = a.heads / a.kv_heads, per_share = group / splits;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kg = warp & 3, half = warp >> 2;
    const long tokens = (long)gridDim.y * a.seq;
    const int qw = a.heads * HD, kw = a.kv_heads * HD;
    const long first = (long)b * a.seq;
    const int k_last = min(k0 + BN, a.seq) - 1;

    load_tile_async<HD, BN, THREADS>(Ks, k + first * kw + hk * HD, kw, k0, a.seq);
    load_tile_async<HD, BN, THREADS>(Vs, v + first * kw + hk * HD, kw, k0, a.seq);
    for (int i = threadIdx.x; i < BN; i += THREADS) seg_k[i] = k0 + i < a.seq ? segs[first + k0 + i] : 0;
    const Span sk = span_stats(stats, b, a.seq, k0, BN);

    float acc_dk[HD / 16][4], acc_dv[HD / 16][4];
#pragma unroll
    for (int n = 0; n < HD / 16; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dk[n][e] = acc_dv[n][e] = 0.0f;

    // Work items: (head of the share, query tile), the tiles the masks leave something of.
    const int q_tiles = (a.seq + BM - 1) / BM;
    const int qt_lo = k0 / BM;
    const int qt_hi = a.window ? min(q_tiles - 1, (k_last + a.window - 1) / BM) : q_tiles - 1;
    const int per_head = qt_hi - qt_lo + 1, items = per_share * per_head;
    auto next_live = [&](int j) {
        for (; j < items; ++j)
            if (!spans_disjoint(span_stats(stats, b, a.seq, (qt_lo + j % per_head) * BM, BM), sk)) break;
        return j;
    };
    auto load_item = [&](int j, int slot) {
        const int h = hk * group + share * per_share + j / per_head, q0 = (qt_lo + j % per_head) * BM;
        load_tile_async<HD, BM, THREADS>(Qbuf + slot * BM * HD, q + first * qw + h * HD, qw, q0, a.seq);
        load_tile_async<HD, BM, THREADS>(dObuf + slot * BM * HD, d_o + first * qw + h * HD, qw, q0, a.seq);
    };
    int j = next_live(0), buf = 0;
    if (j < items) load_item(j, 0);
    cp_async_commit();
    while (j < items) {
        const int h = hk * group + share * per_share + j / per_head;
        const int q0 = (qt_lo + j % per_head) * BM, q_last = min(q0 + BM, a.seq) - 1;
        const Span sq = span_stats(stats, b, a.seq, q0, BM);
        const bool masked = !tile_unmasked(sq, sk, q0, q_last, k0, k_last, a.window);
        for (int i = threadIdx.x; i < BM; i += THREADS) {
            const bool in = q0 + i < a.seq;
            seg_q[i] = in ? segs[first + q0 + i] : 0;
            lse_s[i] = in ? lse[h * tokens + first + q0 + i] : EMBER_INF;
            dot_s[i] = in ? dots[h * tokens + first + q0 + i] : 0.0f;
        }
        cp_async_wait_all();
        __syncthreads();
        const int next = next_live(j + 1);
        if (next < items) load_item(next, buf ^ 1);
        cp_async_commit();
        const bf16* Qs = Qbuf + buf * BM * HD;
        const bf16* dOs = dObuf + buf * BM * HD;

        // Sᵀ and dPᵀ for keys 16·kg.., queries 32·half..
        float st[4][4], dpt[4][4];
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 ak[4], av[4];
            ldmatrix_x4(ak, Ks + swz<HD>(kg * 16 + (lane & 15), kk * 2 + (lane >> 4)));
            ldmatrix_x4(av, Vs + swz<HD>(kg * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                const int row = half * 32 + np * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int chunk = kk * 2 + ((lane >> 3) & 1);
                u32 bq[4], bo[4];
                ldmatrix_x4(bq, Qs + swz<HD>(row, chunk));
                ldmatrix_x4(bo, dOs + swz<HD>(row, chunk));
                mma(st[2 * np], ak, bq[0], bq[1]);
                mma(st[2 * np + 1], ak, bq[2], bq[3]);
                mma(dpt[2 * np], av, bo[0], bo[1]);
                mma(dpt[2 * np + 1], av, bo[2], bo[3]);
            }
        }
#pragma unroll
        for (int n = 0; n < 4; ++n) {
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int rk = kg * 16 + (lane >> 2) + (e >> 1) * 8;
                float p2[2], ds2[2];
#pragma unroll
                for (int t = 0; t < 2; ++t) {
                    const int cq = half * 32 + n * 8 + 2 * (lane & 3) + t;
                    float dcap;
                    const float sc = flash_score(st[n][e + t], a.scale, a.cap, &dcap);
                    bool ok = true;
                    if (masked)
                        ok = q0 + cq < a.seq && k0 + rk < a.seq &&
                             attend_allowed(q0 + cq, k0 + rk, seg_q[cq], seg_k[rk], a.window);
                    const float p = ok ? exp2f((sc - lse_s[cq]) * LOG2E) : 0.0f;
                    p2[t] = p;
                    ds2[t] = p * (dpt[n][e + t] - dot_s[cq]) * dcap * a.scale;
                }
                const int cq0 = half * 32 + n * 8 + 2 * (lane & 3);
                const int off = swz<BM>(rk, cq0 >> 3) + (cq0 & 7);
                *(u32*)(Ps + off) = pack_bf16x2(p2[0], p2[1]);
                *(u32*)(dSs + off) = pack_bf16x2(ds2[0], ds2[1]);
            }
        }
        __syncthreads();

        // dV += Pᵀ·dO and dK += dSᵀ·Q for keys 16·kg.., dimensions (HD/2)·half..
#pragma unroll
        for (int kq = 0; kq < BM / 16; ++kq) {
            u32 ap[4], ads[4];
            ldmatrix_x4(ap, Ps + swz<BM>(kg * 16 + (lane & 15), kq * 2 + (lane >> 4)));
            ldmatrix_x4(ads, dSs + swz<BM>(kg * 16 + (lane & 15), kq * 2 + (lane >> 4)));
#pragma unroll
            for (int dp = 0; dp < HD / 32; ++dp) {
                const int row = kq * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int chunk = half * (HD / 16) + dp * 2 + (lane >> 4);
                u32 bo[4], bq[4];
                ldmatrix_x4_trans(bo, dOs + swz<HD>(row, chunk));
                ldmatrix_x4_trans(bq, Qs + swz<HD>(row, chunk));
                mma(acc_dv[2 * dp], ap, bo[0], bo[1]);
                mma(acc_dv[2 * dp + 1], ap, bo[2], bo[3]);
                mma(acc_dk[2 * dp], ads, bq[0], bq[1]);
                mma(acc_dk[2 * dp + 1], ads, bq[2], bq[3]);
            }
        }
        j = next;
        buf ^= 1;
    }
    cp_async_wait_all();
    const long n_part = tokens * kw;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int rk = kg * 16 + (lane >> 2) + i * 8;
        if (k0 + rk >= a.seq) continue;
        const long off = (first + k0 + rk) * kw + hk * HD + half * (HD / 2) + 2 * (lane & 3);
#pragma unroll
        for (int n = 0; n < HD / 16; ++n) {
            if (splits == 1) {
                *(u32*)(dk + off + n * 8) = pack_bf16x2(acc_dk[n][2 * i], acc_dk[n][2 * i + 1]);
                *(u32*)(dv + off + n * 8) = pack_bf16x2(acc_dv[n][2 * i], acc_dv[n][2 * i + 1]);
            } else {
                float* pk = part + share * n_part + off + n * 8;
                float* pv = part + (splits + share) * n_part + off + n * 8;
                *(float2*)pk = make_float2(acc_dk[n][2 * i], acc_dk[n][2 * i + 1]);
                *(float2*)pv = make_float2(acc_dv[n][2 * i], acc_dv[n][2 * i + 1]);
            }
        }
    }
}

// dK, dV (bf16) as the sums over the shares of `part` (see `flash_backward_dkdv`), in order.
extern "C" __global__ void attention_flash_sum_splits(const float* part, bf16* dk, bf16* dv, long n, int splits) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float sk = 0.0f, sv = 0.0f;
        for (int s = 0; s < splits; ++s) {
            sk += part[s * n + i];
            sv += part[(splits + s) * n + i];
        }
        dk[i] = from_f32<bf16>(sk);
        dv[i] = from_f32<bf16>(sv);
    }
}

// ---- dQ: grid (heads, batch, query tiles of 64), 4 warps of 16 query rows, BN keys a step ----
// K is double-buffered (the next tile's loads during this one's whole step), V loads during dQ.
template <int HD, int BN>
__device__ void flash_backward_dq(const bf16* q, const bf16* k, const bf16* v, const bf16* d_o, const float* lse,
                                  const float* dots, bf16* dq, const int* segs, const int* stats, AttnShape a) {
    constexpr int BM = 64, THREADS = 128;
    extern __shared__ __attribute__((aligned(16))) unsigned char smem[];
    bf16* Qs = (bf16*)smem;
    bf16* dOs = Qs + BM * HD;
    bf16* Kbuf = dOs + BM * HD;  // two tiles
    bf16* Vs = Kbuf + 2 * BN * HD;
    int* seg_q = (int*)(Vs + BN * HD);
    int* seg_k = seg_q + BM;
    const int h = blockIdx.x, b = blockIdx.y, q0 = (gridDim.z - 1 - blockIdx.z) * BM;
    const int hk = h / (a.heads / a.kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long tokens = (long)gridDim.y * a.seq;
    const int qw = a.heads * HD, kw = a.kv_heads * HD;
    const long first = (long)b * a.seq;
    const int q_last = min(q0 + BM, a.seq) - 1;
    const bf16* k_head = k + first * kw + hk * HD;
    const bf16* v_head = v + first * kw + hk * HD;

    for (int i = threadIdx.x; i < BM; i += THREADS) seg_q[i] = q0 + i < a.seq ? segs[first + q0 + i] : 0;
    float row_lse[2], row_dot[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = q0 + warp * 16 + (lane >> 2) + i * 8;
        row_lse[i] = r < a.seq ? lse[h * tokens + first + r] : EMBER_INF;
        row_dot[i] = r < a.seq ? dots[h * tokens + first + r] : 0.0f;
    }
    const Span sq = span_stats(stats, b, a.seq, q0, BM);

    float acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const int kt_hi = q_last / BN;
    auto next_live = [&](int kt) {
        for (; kt <= kt_hi; ++kt) {
            const int k_last = min(kt * BN + BN, a.seq) - 1;
            if (a.window && q0 - k_last >= a.window) continue;
            if (!spans_disjoint(sq, span_stats(stats, b, a.seq, kt * BN, BN))) break;
        }
        return kt;
    };
    load_tile_async<HD, BM, THREADS>(Qs, q + first * qw + h * HD, qw, q0, a.seq);
    load_tile_async<HD, BM, THREADS>(dOs, d_o + first * qw + h * HD, qw, q0, a.seq);
    int kt = next_live(a.window ? max(0, q0 - a.window + 1) / BN : 0);
    if (kt <= kt_hi) {
        load_tile_async<HD, BN, THREADS>(Kbuf, k_head, kw, kt * BN, a.seq);
        load_tile_async<HD, BN, THREADS>(Vs, v_head, kw, kt * BN, a.seq);
    }
    cp_async_commit();
    int buf = 0;
    while (kt <= kt_hi) {
        const int k0 = kt * BN, k_last = min(k0 + BN, a.seq) - 1;
        const Span sk = span_stats(stats, b, a.seq, k0, BN);
        const bool masked = !tile_unmasked(sq, sk, q0, q_last, k0, k_last, a.window);
        for (int i = threadIdx.x; i < BN; i += THREADS) seg_k[i] = k0 + i < a.seq ? segs[first + k0 + i] : 0;
        cp_async_wait_all();
        __syncthreads();
        const int next = next_live(kt + 1);
        if (next <= kt_hi) load_tile_async<HD, BN, THREADS>(Kbuf + (buf ^ 1) * BN * HD, k_head, kw, next * BN, a.seq);
        cp_async_commit();
        const bf16* Ks = Kbuf + buf * BN * HD;

        float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 aq[4], ao[4];
            ldmatrix_x4(aq, Qs + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
            ldmatrix_x4(ao, dOs + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                const int row = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int chunk = kk * 2 + ((lane >> 3) & 1);
                u32 bk[4], bv[4];
                ldmatrix_x4(bk, Ks + swz<HD>(row, chunk));
                ldmatrix_x4(bv, Vs + swz<HD>(row, chunk));
                mma(s[2 * np], aq, bk[0], bk[1]);
                mma(s[2 * np + 1], aq, bk[2], bk[3]);
                mma(dp[2 * np], ao, bv[0], bv[1]);
                mma(dp[2 * np + 1], ao, bv[2], bv[3]);
            }
        }
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = warp * 16 + (lane >> 2) + (e >> 1) * 8, c = n * 8 + 2 * (lane & 3) + (e & 1);
                float dcap;
                const float sc = flash_score(s[n][e], a.scale, a.cap, &dcap);
                bool ok = true;
                if (masked)
                    ok = q0 + r < a.seq && k0 + c < a.seq &&
                         attend_allowed(q0 + r, k0 + c, seg_q[r], seg_k[c], a.window);
                const float p = ok ? exp2f((sc - row_lse[e >> 1]) * LOG2E) : 0.0f;
                s[n][e] = p * (dp[n][e] - row_dot[e >> 1]) * dcap * a.scale;
            }
        }
        __syncthreads();  // V and seg_k are free
        if (next <= kt_hi) load_tile_async<HD, BN, THREADS>(Vs, v_head, kw, next * BN, a.seq);
        cp_async_commit();
#pragma unroll
        for (int kb = 0; kb < BN / 16; ++kb) {
            const u32 ads[4] = {pack_bf16x2(s[2 * kb][0], s[2 * kb][1]), pack_bf16x2(s[2 * kb][2], s[2 * kb][3]),
                                pack_bf16x2(s[2 * kb + 1][0], s[2 * kb + 1][1]),
                                pack_bf16x2(s[2 * kb + 1][2], s[2 * kb + 1][3])};
#pragma unroll
            for (int d = 0; d < HD / 16; ++d) {
                u32 bk[4];
                ldmatrix_x4_trans(bk, Ks + swz<HD>(kb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, d * 2 + (lane >> 4)));
                mma(acc[2 * d], ads, bk[0], bk[1]);
                mma(acc[2 * d + 1], ads, bk[2], bk[3]);
            }
        }
        kt = next;
        buf ^= 1;
    }
    cp_async_wait_all();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = warp * 16 + (lane >> 2) + i * 8;
        if (q0 + r >= a.seq) continue;
        bf16* row = dq + (first + q0 + r) * qw + h * HD + 2 * (lane & 3);
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) *(u32*)(row + n * 8) = pack_bf16x2(acc[n][2 * i], acc[n][2 * i + 1]);
    }
}

#define EMBER_FLASH_KERNELS(HD, BNQ)                                                                            \
    extern "C" __global__ void __launch_bounds__(128) attention_flash_forward_##HD(                              \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const int* segs, const int* stats,   \
        ATTN_PARAMS) {                                                                                          \
        flash_forward<HD>(q, k, v, o, lse, segs, stats, ATTN_SHAPE);                                            \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) attention_flash_backward_dkdv_##HD(                        \
        const bf16* q, const bf16* k, const bf16* v, const bf16* d_o, const float* lse, const float* dots,     \
        bf16* dk, bf16* dv, float* part, int splits, const int* segs, const int* stats, ATTN_PARAMS) {          \
        flash_backward_dkdv<HD>(q, k, v, d_o, lse, dots, dk, dv, part, splits, segs, stats, ATTN_SHAPE);        \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) attention_flash_backward_dq_##HD(                          \
        const bf16* q, const bf16* k, const bf16* v, const bf16* d_o, const float* lse, const float* dots,     \
        bf16* dq, const int* segs, const int* stats, ATTN_PARAMS) {                                             \
        flash_backward_dq<HD, BNQ>(q, k, v, d_o, lse, dots, dq, segs, stats, ATTN_SHAPE);                       \
    }
EMBER_FLASH_KERNELS(64, 64)
EMBER_FLASH_KERNELS(128, 64)
EMBER_FLASH_KERNELS(256, 32)
