/* NNCF integer weight compression (INT4/INT8, SYM/ASYM), as weight_lowering computes it. */
#include "pq_internal.h"

typedef struct {
    const void *src;
    int dtype, bits, symmetric;
    int64_t k, stride, group;
    uint8_t *q;
    float *scale;
    uint8_t *zp;
} nncf_ctx;

#define PQ_F32_EPS 0x1p-23f /* numpy.finfo(float32).eps */

PQ_HOT static int64_t nncf_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const nncf_ctx *c = (const nncf_ctx *)vctx;
    const int64_t groups = c->k / c->group;
    const float half = (float)(1 << (c->bits - 1));
    const float qmax = (float)((1 << c->bits) - 1);
    for (int64_t r = r0; r < r1; r++) {
        const void *row = pq_row_ptr(c->src, c->dtype, r, c->stride);
        const float *x = pq_row_f32(row, c->dtype, c->k, buf);
        uint8_t *out = c->q + (size_t)r * (size_t)c->k;
        for (int64_t g = 0; g < groups; g++) {
            const float *xg = x + g * c->group;
            uint8_t *og = out + g * c->group;
            const int gsz = (int)c->group;
            float min, max;
            if (pq_minmax(xg, gsz, &min, &max)) return r;
            float scale;
            if (c->symmetric) {
                const float amin = pq_absf(min);
                scale = (amin >= max ? amin : -max) / half;
                scale = pq_absf(scale) < PQ_F32_EPS ? PQ_F32_EPS : scale;
                for (int j = 0; j < gsz; j++) {
                    float v = pq_clampf(pq_rint(xg[j] / scale), -half, half - 1.0f);
                    og[j] = (uint8_t)(int8_t)(int32_t)v;
                }
            } else {
                const float mn = min < 0.0f ? min : 0.0f;
                const float mx = max > 0.0f ? max : 0.0f;
                scale = (mx - mn) / qmax;
                scale = pq_absf(scale) < PQ_F32_EPS ? PQ_F32_EPS : scale;
                const float z = pq_clampf(0.0f - pq_rint(mn / scale), 0.0f, qmax);
                c->zp[r * groups + g] = (uint8_t)(int32_t)z;
                for (int j = 0; j < gsz; j++) {
                    float v = pq_clampf(pq_rint(xg[j] / scale + z), 0.0f, qmax);
                    og[j] = (uint8_t)(int32_t)v;
                }
            }
            c->scale[r * groups + g] = scale;
        }
    }
    return -1;
}

int pq_nncf_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                     int bits, int symmetric, int group,
                     uint8_t *q, float *scale, uint8_t *zero_point, int threads, int64_t *bad_row) {
    if (!src || !q || !scale || n < 1 || k < 1 || row_stride < k || src_dtype < 0 || src_dtype > 2)
        return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || group < 1 || k % group || (!symmetric && !zero_point))
        return PQ_ERR_ARGS;
    nncf_ctx c = {src, src_dtype, bits, symmetric, k, row_stride, group, q, scale, symmetric ? NULL : zero_point};
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, nncf_rows, &c, bad_row);
}

/* OpenVINO u4/i4 bytes: element 2i in the low nibble of byte i, 2i+1 in the high one (the low
   four bits of a two's-complement int8 are its i4). An odd count leaves a zero high nibble. */
PQ_HOT void pq_pack_nibbles(const uint8_t *src, int64_t n, uint8_t *dst) {
    int64_t i = 0;
#if PQ_SSE2
    const __m128i low = _mm_set1_epi16(0x000f);
    for (; i + 32 <= n; i += 32) {
        /* a 16-bit lane holds (src[2i], src[2i+1]); low | high << 4 lands in its low byte */
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        a = _mm_or_si128(_mm_and_si128(a, low), _mm_and_si128(_mm_srli_epi16(a, 4), _mm_set1_epi16(0x00f0)));
        b = _mm_or_si128(_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi16(0x00f0)));
        _mm_storeu_si128((__m128i *)(dst + i / 2), _mm_packus_epi16(a, b));
    }
#endif
    for (; i + 1 < n; i += 2) dst[i / 2] = (uint8_t)((src[i] & 0x0fu) | (src[i + 1] << 4));
    if (i < n) dst[i / 2] = (uint8_t)(src[i] & 0x0fu);
}
