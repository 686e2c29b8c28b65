/*
 * Helpers shared by the phi-quant kernels (not part of the Python-facing API).
 *
 * Everything here is exact IEEE float32 arithmetic: the build uses -ffp-contract=off so no
 * multiply-add is fused, and no -ffast-math, so every operation rounds as the vendors' C does.
 */
#ifndef PQ_INTERNAL_H
#define PQ_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "phi_quant_kernel.h"

/* Row kernels are compiled twice on x86-64 Linux (baseline SSE2 and AVX2) and picked at load
   time; the arithmetic is the same IEEE float32 either way, so the bytes are identical. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && !defined(PQ_NO_CLONES)
#define PQ_HOT __attribute__((target_clones("avx2", "default")))
#else
#define PQ_HOT
#endif

/* SSE2 is baseline on x86-64, so both clones may use its intrinsics (byte packing). */
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define PQ_SSE2 1
#else
#define PQ_SSE2 0
#endif

#if defined(_MSC_VER)
#define PQ_INLINE static __forceinline
#else
#define PQ_INLINE static inline __attribute__((always_inline))
#endif

PQ_INLINE uint32_t pq_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
PQ_INLINE float pq_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
PQ_INLINE float pq_absf(float x) { return pq_float(pq_bits(x) & 0x7fffffffu); }

/* ---- source dtypes -> float32 (exact) ---- */

PQ_INLINE float pq_bf16_to_f32(uint16_t h) { return pq_float((uint32_t)h << 16); }

PQ_INLINE float pq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    /* Placing exponent+mantissa 13 bits up and multiplying by 2^112 rebiases the exponent
       (15 -> 127) and scales subnormals correctly; Inf/NaN keep an all-ones exponent. */
    float mag = pq_float(em << 13) * 0x1p112f;
    uint32_t bits = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : pq_bits(mag);
    return pq_float(bits | sign);
}

/* ---- float32 -> stored dtypes, round to nearest even ---- */

PQ_INLINE uint16_t pq_f32_to_bf16(float f) {
    uint32_t x = pq_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

PQ_INLINE uint16_t pq_f32_to_f16(float f) {
    /* Branch-free so that loops over it vectorise: every case is computed, then selected. */
    const uint32_t x = pq_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    /* normal half (|f| >= 2^-14): round to nearest even at bit 13, rebias the exponent */
    const uint32_t normal = (ax + 0x0fffu + ((ax >> 13) & 1u) - 0x38000000u) >> 13;
    /* subnormal half: |f| * 2^24 < 1024 is exact; adding 2^23 rounds it to an integer (RNE) */
    const uint32_t sub = pq_bits(pq_float(ax & 0x3fffffffu) * 0x1p24f + 0x1p23f) - 0x4b000000u;
    /* NaN keeps its top payload bits (never all zero), as numpy does */
    const uint32_t nan = 0x7c00u | ((ax & 0x007fffffu) >> 13) | ((ax & 0x007fe000u) ? 0u : 1u);
    uint32_t h = ax >= 0x38800000u ? normal : sub;
    h = ax >= 0x477ff000u ? 0x7c00u : h; /* >= 65520 rounds to infinity */
    h = ax > 0x7f800000u ? nan : h;
    return (uint16_t)(sign | h);
}

/* ---- rounding ---- */

/* C rint() in the default mode (halves to even), without a libm call: adding and removing 2^23
   leaves an integer for |v| < 2^23; larger values (and Inf/NaN) are returned unchanged. */
PQ_INLINE float pq_rint(float v) {
    float a = pq_absf(v);
    float r = (a + 0x1p23f) - 0x1p23f;
    r = pq_float(pq_bits(r) | (pq_bits(v) & 0x80000000u));
    return a < 0x1p23f ? r : v;
}

/* C roundf() (halves away from zero) for |v| < 2^31, exact (unlike adding 0.5f) and branch-free. */
PQ_INLINE float pq_roundf(float v) {
    const float a = pq_absf(v);
    float t = (float)(int32_t)a;
    t += (float)((a - t) >= 0.5f);
    return pq_float(pq_bits(t) | (pq_bits(v) & 0x80000000u));
}

/* C roundf() for 0 <= v < 2^31 (halves up): exact, unlike (int)(v + 0.5f). */
PQ_INLINE int32_t pq_round_pos(float v) {
    int32_t i = (int32_t)v;
    return i + ((v - (float)i) >= 0.5f);
}

/* v where |v| < limit, else +0 (NaN and Inf included), without a branch. */
PQ_INLINE float pq_zero_beyond(float v, float limit) {
    return pq_float(pq_bits(v) & (0u - (uint32_t)(pq_absf(v) < limit)));
}

/* Clamp to [lo, hi] with NaN -> lo (what x86 gives when the vendors' code casts NaN). */
PQ_INLINE float pq_clampf(float v, float lo, float hi) {
    v = v > lo ? v : lo;
    return v < hi ? v : hi;
}

/* ---- narrowing int32 quants to bytes ----
   Compilers leave int32 -> byte stores scalar (one extract and one store per byte); SSE2's
   saturating packs do 16 at a time and are exact for values already inside the byte range. */

/* out[j] = (uint8_t)q[j] for 0 <= q[j] <= 255. */
PQ_INLINE void pq_store_u8(const int32_t *q, uint8_t *out, int n) {
    int j = 0;
#if PQ_SSE2
    for (; j + 16 <= n; j += 16) {
        const __m128i *v = (const __m128i *)(q + j);
        __m128i a = _mm_packs_epi32(_mm_loadu_si128(v), _mm_loadu_si128(v + 1));
        __m128i b = _mm_packs_epi32(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3));
        _mm_storeu_si128((__m128i *)(out + j), _mm_packus_epi16(a, b));
    }
#endif
    for (; j < n; j++) out[j] = (uint8_t)q[j];
}

/* out[j] = (uint8_t)(int8_t)q[j] for -128 <= q[j] <= 127. */
PQ_INLINE void pq_store_i8(const int32_t *q, uint8_t *out, int n) {
    int j = 0;
#if PQ_SSE2
    for (; j + 16 <= n; j += 16) {
        const __m128i *v = (const __m128i *)(q + j);
        __m128i a = _mm_packs_epi32(_mm_loadu_si128(v), _mm_loadu_si128(v + 1));
        __m128i b = _mm_packs_epi32(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3));
        _mm_storeu_si128((__m128i *)(out + j), _mm_packs_epi16(a, b));
    }
#endif
    for (; j < n; j++) out[j] = (uint8_t)(int8_t)q[j];
}

/* out[j] = q[2j] | q[2j+1] << 4 for nibbles 0 <= q <= 15 (n even). */
PQ_INLINE void pq_store_nibble_pairs(const int32_t *q, uint8_t *out, int n) {
    int j = 0;
#if PQ_SSE2
    const __m128i lowbyte = _mm_set1_epi16(0x00ff);
    for (; j + 32 <= n; j += 32) {
        const __m128i *v = (const __m128i *)(q + j);
        /* 16-bit lanes hold (q[2i], q[2i+1]) as bytes; lane | lane >> 4 puts q[2i+1] << 4 into the low byte */
        __m128i a = _mm_packus_epi16(_mm_packs_epi32(_mm_loadu_si128(v), _mm_loadu_si128(v + 1)),
                                     _mm_packs_epi32(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3)));
        __m128i b = _mm_packus_epi16(_mm_packs_epi32(_mm_loadu_si128(v + 4), _mm_loadu_si128(v + 5)),
                                     _mm_packs_epi32(_mm_loadu_si128(v + 6), _mm_loadu_si128(v + 7)));
        a = _mm_and_si128(_mm_or_si128(a, _mm_srli_epi16(a, 4)), lowbyte);
        b = _mm_and_si128(_mm_or_si128(b, _mm_srli_epi16(b, 4)), lowbyte);
        _mm_storeu_si128((__m128i *)(out + j / 2), _mm_packus_epi16(a, b));
    }
#endif
    for (; j < n; j += 2) out[j / 2] = (uint8_t)(q[j] | (q[j + 1] << 4));
}

/* OpenVINO u4/i4 bytes: dst[i] = src[2i] & 15 | src[2i+1] << 4 for an even n (the low four bits
   of a two's-complement int8 are its i4). */
PQ_INLINE void pq_nibble_pairs(const uint8_t *src, int n, uint8_t *dst) {
    int i = 0;
#if PQ_SSE2
    const __m128i low = _mm_set1_epi16(0x000f), high = _mm_set1_epi16(0x00f0);
    for (; i + 32 <= n; i += 32) {
        /* a 16-bit lane holds (src[2i], src[2i+1]); low | high << 4 lands in its low byte */
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        a = _mm_or_si128(_mm_and_si128(a, low), _mm_and_si128(_mm_srli_epi16(a, 4), high));
        b = _mm_or_si128(_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), high));
        _mm_storeu_si128((__m128i *)(dst + i / 2), _mm_packus_epi16(a, b));
    }
#endif
    for (; i + 1 < n; i += 2) dst[i / 2] = (uint8_t)((src[i] & 0x0fu) | (src[i + 1] << 4));
}

/* The block scans below are the first reads of the weight: they ask for the cache lines
   PQ_AHEAD floats (8 KiB) ahead, which one thread's hardware prefetcher does not fetch early
   enough (one thread from float32: Q8_0 7.4 -> 5.8 ms, Q4_0 9.6 -> 8.3 ms). A prefetch never faults, even past the end. */
#define PQ_AHEAD 2048
#if defined(__GNUC__)
#define PQ_PREFETCH(p) __builtin_prefetch(p)
#else
#define PQ_PREFETCH(p) ((void)0)
#endif

/* ---- block statistics ----
   The vendors scan a block with `if (v < min) min = v` (the first of equal values wins). For
   finite values that only matters for signed zeros, so the fast path reduces integer keys that
   order like the floats (auto-vectorised, any order) and the scalar scan reruns only when a
   result is zero. */

PQ_INLINE int32_t pq_key(float f) {
    int32_t i = (int32_t)pq_bits(f);
    return i ^ (int32_t)((uint32_t)(i >> 31) & 0x7fffffffu);
}

PQ_INLINE float pq_unkey(int32_t k) { return pq_float((uint32_t)(k ^ (int32_t)((uint32_t)(k >> 31) & 0x7fffffffu))); }

/* Returns 1 (and nothing else) when the block holds NaN or Inf: their keys lie beyond
   those of +-FLT_MAX, so the finiteness check costs nothing extra. */
PQ_INLINE int pq_minmax(const float *x, int n, float *mn, float *mx) {
    int32_t kmin = INT32_MAX, kmax = INT32_MIN;
    if (n <= 256) /* blocks and groups; a whole row (per-channel) streams well without */
        for (int j = 0; j < n; j += 16) PQ_PREFETCH(x + j + PQ_AHEAD);
    for (int j = 0; j < n; j++) {
        int32_t k = pq_key(x[j]);
        kmin = k < kmin ? k : kmin;
        kmax = k > kmax ? k : kmax;
    }
    if (kmax > 0x7f7fffff || kmin < (int32_t)0x80800000) return 1;
    float lo = pq_unkey(kmin), hi = pq_unkey(kmax);
    if (lo == 0.0f || hi == 0.0f) {
        lo = x[0];
        hi = x[0];
        for (int j = 1; j < n; j++) {
            if (x[j] < lo) lo = x[j];
            if (x[j] > hi) hi = x[j];
        }
    }
    *mn = lo;
    *mx = hi;
    return 0;
}

/* max |x| of a block (the bits of a non-negative float order like the float); a result
   that is not finite means the block holds NaN or Inf. */
PQ_INLINE float pq_absmax(const float *x, int n) {
    uint32_t m = 0;
    if (n <= 256) /* blocks and groups; a whole row (per-channel) streams well without */
        for (int j = 0; j < n; j += 16) PQ_PREFETCH(x + j + PQ_AHEAD);
    for (int j = 0; j < n; j++) {
        uint32_t a = pq_bits(x[j]) & 0x7fffffffu;
        m = a > m ? a : m;
    }
    return pq_float(m);
}

/* ---- rows ---- */

/* float32 view of a source row: f32 rows are returned in place, others decoded into buf. */
const float *pq_row_f32(const void *row, int dtype, int64_t n, float *buf);

PQ_INLINE const void *pq_row_ptr(const void *src, int dtype, int64_t r, int64_t row_stride) {
    return (const char *)src + (size_t)r * (size_t)row_stride * (dtype == PQ_F32 ? 4u : 2u);
}

PQ_INLINE void pq_store_scale(void *dst, int64_t i, int dtype, float v) {
    if (dtype == PQ_F32) ((float *)dst)[i] = v;
    else if (dtype == PQ_F16) ((uint16_t *)dst)[i] = pq_f32_to_f16(v);
    else ((uint16_t *)dst)[i] = pq_f32_to_bf16(v);
}

PQ_INLINE float pq_load_scale(const void *p, int64_t i, int dtype) {
    if (dtype == PQ_F32) return ((const float *)p)[i];
    if (dtype == PQ_F16) return pq_f16_to_f32(((const uint16_t *)p)[i]);
    return pq_bf16_to_f32(((const uint16_t *)p)[i]);
}

/* 1 when a stored 16-bit scale is infinite (the format cannot hold it). */
PQ_INLINE int pq_half_inf(uint16_t h, int dtype) {
    return dtype == PQ_F16 ? (h & 0x7c00u) == 0x7c00u : dtype == PQ_BF16 ? (h & 0x7f80u) == 0x7f80u : 0;
}

/* What a row function returns for a row whose stored scale overflows (NaN/Inf rows: the row). */
#define PQ_SCALE_FLAG ((int64_t)1 << 62)

/* Runs fn(ctx, r0, r1, buf) over rows [0, n) split into contiguous chunks, one per thread.
   fn returns -1, the first row in its chunk holding NaN/Inf, or PQ_SCALE_FLAG + the first row
   whose stored scale overflows. buf holds `buf_floats` floats per thread. Returns PQ_OK,
   PQ_ERR_NONFINITE or PQ_ERR_SCALE (with *bad_row = smallest such row; NaN/Inf take precedence)
   or PQ_ERR_NOMEM. */
typedef int64_t (*pq_rows_fn)(void *ctx, int64_t r0, int64_t r1, float *buf);
int pq_parallel_rows(int64_t n, int threads, int64_t buf_floats, pq_rows_fn fn, void *ctx, int64_t *bad_row);

#endif
