/* ggml Q4_0, Q4_1 and Q8_0 blocks, as ggml's quantize_row_*_ref write them.
 *
 * A row is done in runs of up to RUN blocks and three passes: block statistics, then every
 * block's scale and its fp16 bits in one vectorised loop (a scalar fp32->fp16 conversion per
 * block costs as much as the block's quants), then the quants. The arithmetic per block is
 * exactly ggml's; only the order of independent blocks changes. The run functions are inlined
 * into the row kernel so that its AVX2 clone covers them.
 */
#include "pq_internal.h"

#define RUN 64
#define PQ_FLT_MAX 3.40282347e+38f

typedef struct {
    const void *src;
    int dtype, type;
    int64_t k, stride, row_bytes;
    uint8_t *dst;
} ggml_ctx;

/* (int8_t)v then MIN(15, .) for the v >= 0 ggml produces; a non-finite v gives 0, as on x86. */
PQ_INLINE int32_t nibble_trunc(float v) {
    return (int32_t)pq_clampf(pq_zero_beyond(v, 0x1p30f), 0.0f, 15.0f);
}

/* ggml's 4-bit order: element j in the low nibble of byte j, element j+16 in its high nibble. */
PQ_INLINE void pack_split_halves(const int32_t *q, uint8_t *qs) {
#if PQ_SSE2
    /* SSE2 is part of x86-64: narrow 32 int32 nibbles to bytes with saturating packs (exact for
       0..15) and join the halves with one shift, instead of 16 scalar extracts and stores. */
    const __m128i *v = (const __m128i *)q;
    __m128i lo = _mm_packus_epi16(_mm_packs_epi32(_mm_loadu_si128(v), _mm_loadu_si128(v + 1)),
                                  _mm_packs_epi32(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3)));
    __m128i hi = _mm_packus_epi16(_mm_packs_epi32(_mm_loadu_si128(v + 4), _mm_loadu_si128(v + 5)),
                                  _mm_packs_epi32(_mm_loadu_si128(v + 6), _mm_loadu_si128(v + 7)));
    _mm_storeu_si128((__m128i *)qs, _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
#else
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
#endif
}

/* Each run returns 0, 1 for NaN/Inf in the input, or 2 when an fp16 scale or minimum overflows. */

/* 1/d, or 0 for a zero scale (ggml: `d ? 1.0f/d : 0.0f`). */
PQ_INLINE float inverse(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

/* fp16 scales h[] of d[] and their inverses id[] for nb blocks; nonzero when a scale overflows fp16. */
PQ_INLINE int f16_scales(const float *d, uint16_t *h, float *id, int nb) {
    int inf = 0;
    for (int b = 0; b < nb; b++) {
        h[b] = pq_f32_to_f16(d[b]);
        id[b] = inverse(d[b]);
        inf |= pq_half_inf(h[b], PQ_F16);
    }
    return inf;
}

PQ_INLINE int run_q8_0(const float *x, uint8_t *out, int nb) {
    float d[RUN], id[RUN];
    uint16_t h[RUN];
    for (int b = 0; b < nb; b++) {
        const float amax = pq_absmax(x + b * 32, 32);
        if (!(amax <= PQ_FLT_MAX)) return 1;
        d[b] = amax / 127.0f;
    }
    if (f16_scales(d, h, id, nb)) return 2;
    for (int b = 0; b < nb; b++) {
        uint8_t *o = out + b * 34;
        const float *xb = x + b * 32;
        const float i = id[b];
        memcpy(o, &h[b], 2);
        int32_t q[32];
        for (int j = 0; j < 32; j++) {
            /* roundf; a non-finite product (1/d overflowed) gives 0 */
            q[j] = (int32_t)pq_roundf(pq_zero_beyond(xb[j] * i, 0x1p30f));
        }
        pq_store_i8(q, o + 2, 32);
    }
    return 0;
}

PQ_INLINE int run_q4_0(const float *x, uint8_t *out, int nb) {
    float lo[RUN], hi[RUN], d[RUN], id[RUN];
    uint16_t h[RUN];
    for (int b = 0; b < nb; b++) {
        if (pq_minmax(x + b * 32, 32, &lo[b], &hi[b])) return 1;
    }
    /* ggml keeps the signed value of the first element with the largest |x|: the min/max give
       it unless |min| == max; then the block is all zero (+0, ggml's initial value) or holds
       both +a and -a and is searched for the first. */
    for (int b = 0; b < nb; b++) d[b] = hi[b] > -lo[b] ? hi[b] : lo[b];
    for (int b = 0; b < nb; b++) {
        if (hi[b] != -lo[b]) continue;
        const float *xb = x + b * 32;
        d[b] = 0.0f;
        for (int j = 0; hi[b] != 0.0f && j < 32; j++) {
            if (pq_absf(xb[j]) == hi[b]) { d[b] = xb[j]; break; }
        }
    }
    for (int b = 0; b < nb; b++) d[b] = d[b] / -8.0f;
    if (f16_scales(d, h, id, nb)) return 2;
    for (int b = 0; b < nb; b++) {
        uint8_t *o = out + b * 18;
        const float *xb = x + b * 32;
        const float i = id[b];
        memcpy(o, &h[b], 2);
        int32_t q[32];
        for (int j = 0; j < 32; j++) q[j] = nibble_trunc(xb[j] * i + 8.5f);
        pack_split_halves(q, o + 2);
    }
    return 0;
}

PQ_INLINE int run_q4_1(const float *x, uint8_t *out, int nb) {
    float d[RUN], mn[RUN], id[RUN];
    uint16_t hd[RUN], hm[RUN];
    for (int b = 0; b < nb; b++) {
        float max;
        if (pq_minmax(x + b * 32, 32, &mn[b], &max)) return 1;
        d[b] = (max - mn[b]) / 15.0f;
    }
    int inf = f16_scales(d, hd, id, nb);
    for (int b = 0; b < nb; b++) {
        hm[b] = pq_f32_to_f16(mn[b]);
        inf |= pq_half_inf(hm[b], PQ_F16);
    }
    if (inf) return 2;
    for (int b = 0; b < nb; b++) {
        uint8_t *o = out + b * 20;
        const float *xb = x + b * 32;
        const float i = id[b], m = mn[b];
        memcpy(o, &hd[b], 2);
        memcpy(o + 2, &hm[b], 2);
        int32_t q[32];
        for (int j = 0; j < 32; j++) q[j] = nibble_trunc((xb[j] - m) * i + 0.5f);
        pack_split_halves(q, o + 4);
    }
    return 0;
}

PQ_HOT static int64_t ggml_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const ggml_ctx *c = (const ggml_ctx *)vctx;
    const int64_t nb = c->k / 32;
    const int bytes = c->type == PQ_GGML_Q8_0 ? 34 : c->type == PQ_GGML_Q4_0 ? 18 : 20;
    int64_t scale_row = -1; /* NaN/Inf anywhere in the chunk take precedence over a scale overflow */
    for (int64_t r = r0; r < r1; r++) {
        const float *x = pq_row_f32(pq_row_ptr(c->src, c->dtype, r, c->stride), c->dtype, c->k, buf);
        uint8_t *out = c->dst + (size_t)r * (size_t)c->row_bytes;
        for (int64_t b = 0; b < nb; b += RUN) {
            const int len = (int)(nb - b < RUN ? nb - b : RUN);
            int bad;
            if (c->type == PQ_GGML_Q8_0) bad = run_q8_0(x + b * 32, out + b * bytes, len);
            else if (c->type == PQ_GGML_Q4_0) bad = run_q4_0(x + b * 32, out + b * bytes, len);
            else bad = run_q4_1(x + b * 32, out + b * bytes, len);
            if (bad == 1) return r;
            if (bad == 2 && scale_row < 0) scale_row = r;
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

int pq_ggml_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                     int ggml_type, uint8_t *dst, int threads, int64_t *bad_row) {
    int bytes = ggml_type == PQ_GGML_Q8_0 ? 34 : ggml_type == PQ_GGML_Q4_0 ? 18 : ggml_type == PQ_GGML_Q4_1 ? 20 : 0;
    if (!src || !dst || bytes == 0 || n < 1 || k < 32 || k % 32 || row_stride < k || src_dtype < 0 || src_dtype > 2)
        return PQ_ERR_ARGS;
    ggml_ctx c = {src, src_dtype, ggml_type, k, row_stride, k / 32 * bytes, dst};
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, ggml_rows, &c, bad_row);
}
