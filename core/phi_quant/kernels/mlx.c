/* mlx affine quantization, as mx.quantize computes it on the CPU. */
#include "pq_internal.h"

#define RUN 32

typedef struct {
    const void *src;
    int dtype, bits, group, scale_dtype;
    int64_t k, stride;
    uint32_t *wq;
    void *scales, *biases;
} mlx_ctx;

PQ_HOT static int64_t mlx_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const mlx_ctx *c = (const mlx_ctx *)vctx;
    const float nbins = (float)((1 << c->bits) - 1);
    const int per_word = 32 / c->bits;
    const int64_t groups = c->k / c->group;
    const int64_t words = c->k / per_word;
    int32_t q[128];
    float lo[RUN], hi[RUN], scale[RUN], bias[RUN];
    int64_t scale_row = -1; /* NaN/Inf anywhere in the chunk take precedence over a scale overflow */
    for (int64_t r = r0; r < r1; r++) {
        const float *x = pq_row_f32(pq_row_ptr(c->src, c->dtype, r, c->stride), c->dtype, c->k, buf);
        uint32_t *out = c->wq + (size_t)r * (size_t)words;
        for (int64_t g0 = 0; g0 < groups; g0 += RUN) {
            const int ng = (int)(groups - g0 < RUN ? groups - g0 : RUN);
            for (int g = 0; g < ng; g++) {
                if (pq_minmax(x + (g0 + g) * c->group, c->group, &lo[g], &hi[g])) return r;
            }
            for (int g = 0; g < ng; g++) { /* mlx's scale and bias, with selects instead of branches */
                const int use_min = pq_absf(lo[g]) > pq_absf(hi[g]);
                float s = (hi[g] - lo[g]) / nbins;
                s = s < 1e-7f ? 1e-7f : s;
                s = use_min ? s : -s;
                const float edge = use_min ? lo[g] : hi[g];
                const float q0 = pq_rint(edge / s);
                const int snap = q0 != 0.0f;
                scale[g] = snap ? edge / (snap ? q0 : 1.0f) : s;
                bias[g] = snap ? edge : 0.0f;
            }
            int inf = 0;
            for (int g = 0; g < ng; g++) {
                const int64_t i = r * groups + g0 + g;
                pq_store_scale(c->scales, i, c->scale_dtype, scale[g]);
                pq_store_scale(c->biases, i, c->scale_dtype, bias[g]);
                if (c->scale_dtype != PQ_F32)
                    inf |= pq_half_inf(((uint16_t *)c->scales)[i], c->scale_dtype) |
                           pq_half_inf(((uint16_t *)c->biases)[i], c->scale_dtype);
            }
            if (inf && scale_row < 0) scale_row = r;
            for (int g = 0; g < ng; g++) {
                const float *xg = x + (g0 + g) * c->group;
                const float s = scale[g], bb = bias[g];
                for (int j = 0; j < c->group; j++) q[j] = (int32_t)pq_clampf(pq_rint((xg[j] - bb) / s), 0.0f, nbins);
                uint32_t *og = out + (g0 + g) * (c->group / per_word);
#if PQ_SSE2 /* x86 is little-endian: element j at bit j*b of its word is plain byte/nibble order */
                if (c->bits == 4) pq_store_nibble_pairs(q, (uint8_t *)og, c->group);
                else pq_store_u8(q, (uint8_t *)og, c->group);
#else
                if (c->bits == 4) {
                    for (int w = 0; w < c->group / per_word; w++) {
                        uint32_t word = 0;
                        for (int e = 0; e < per_word; e++) word |= (uint32_t)q[w * per_word + e] << (e * 4);
                        og[w] = word;
                    }
                } else { /* a constant trip count lets this one vectorise */
                    for (int w = 0; w < c->group / 4; w++) {
                        uint32_t word = 0;
                        for (int e = 0; e < 4; e++) word |= (uint32_t)q[w * 4 + e] << (e * 8);
                        og[w] = word;
                    }
                }
#endif
            }
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

int pq_mlx_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                    int bits, int group, int scale_dtype,
                    uint32_t *wq, void *scales, void *biases, int threads, int64_t *bad_row) {
    if (!src || !wq || !scales || !biases || n < 1 || k < 1 || row_stride < k || src_dtype < 0 || src_dtype > 2)
        return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || (group != 32 && group != 64 && group != 128) || k % group)
        return PQ_ERR_ARGS;
    if (scale_dtype < 0 || scale_dtype > 2) return PQ_ERR_ARGS;
    mlx_ctx c = {src, src_dtype, bits, group, scale_dtype, k, row_stride, wq, scales, biases};
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, mlx_rows, &c, bad_row);
}
