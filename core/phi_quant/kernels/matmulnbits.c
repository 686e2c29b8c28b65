/* ONNX Runtime MatMulNBits blocks, as MLAS BlockwiseQuantizer (quantize_matmul_4bits/8bits) writes them.
 *
 * Blocks are done in runs: statistics, then every block's scale, zero point and reciprocal in
 * one loop that vectorises across blocks, then the quants. Per block the arithmetic is MLAS's.
 */
#include "pq_internal.h"

#define RUN 32

typedef struct {
    const void *src;
    int dtype, bits, block, symmetric, scale_dtype;
    int64_t k, stride, kb, blob, zp_bytes;
    uint8_t *B;
    void *scales;
    uint8_t *zp;
} mnb_ctx;

/* Scale, zero point and reciprocal of the stored scale for `nb` blocks with ranges lo/hi;
   returns 1 when a float16 scale overflows. */
PQ_INLINE int mnb_params(const mnb_ctx *c, const float *lo, const float *hi, int nb, int64_t first,
                          float *inv, int32_t *zp) {
    const int qmax = (1 << c->bits) - 1;
    const float qmax_f = (float)qmax;
    const int mid = 1 << (c->bits - 1);
    float sf[RUN], s[RUN];
    if (c->symmetric) {
        for (int b = 0; b < nb; b++) {
            const float ext = pq_absf(hi[b]) > pq_absf(lo[b]) ? hi[b] : lo[b];
            sf[b] = ext / (float)(-mid);
            zp[b] = mid;
        }
    } else {
        for (int b = 0; b < nb; b++) {
            const float mn = lo[b] < 0.0f ? lo[b] : 0.0f;
            const float mx = hi[b] > 0.0f ? hi[b] : 0.0f;
            const float scale = (mx - mn) / qmax_f;
            const float zfp = scale != 0.0f ? 0.0f - mn / (scale != 0.0f ? scale : 1.0f) : mn;
            const int32_t r = pq_round_pos(pq_clampf(zfp, 0.0f, qmax_f));
            sf[b] = scale;
            zp[b] = zfp < 0.0f ? 0 : zfp > qmax_f ? qmax : r;
        }
    }
    int inf = 0;
    if (c->scale_dtype == PQ_F16) {
        uint16_t *out = (uint16_t *)c->scales + first;
        for (int b = 0; b < nb; b++) {
            out[b] = pq_f32_to_f16(sf[b]);
            s[b] = pq_f16_to_f32(out[b]);
            inf |= pq_half_inf(out[b], PQ_F16);
        }
    } else {
        float *out = (float *)c->scales + first;
        for (int b = 0; b < nb; b++) out[b] = s[b] = sf[b];
    }
    for (int b = 0; b < nb; b++) inv[b] = s[b] != 0.0f ? 1.0f / (s[b] != 0.0f ? s[b] : 1.0f) : 0.0f;
    return inf;
}

PQ_HOT static int64_t mnb_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const mnb_ctx *c = (const mnb_ctx *)vctx;
    const float qmax_f = (float)((1 << c->bits) - 1);
    int32_t q[256];
    float lo[RUN], hi[RUN], inv[RUN];
    int32_t zp[RUN];
    int64_t scale_row = -1; /* NaN/Inf anywhere in the chunk take precedence over a scale overflow */
    for (int64_t r = r0; r < r1; r++) {
        const float *x = pq_row_f32(pq_row_ptr(c->src, c->dtype, r, c->stride), c->dtype, c->k, buf);
        uint8_t *zrow = c->zp ? c->zp + (size_t)r * (size_t)c->zp_bytes : NULL;
        if (zrow && c->bits == 4) memset(zrow, 0x88, (size_t)c->zp_bytes); /* unused nibble: 8 */
        for (int64_t b0 = 0; b0 < c->kb; b0 += RUN) {
            const int nb = (int)(c->kb - b0 < RUN ? c->kb - b0 : RUN);
            for (int b = 0; b < nb; b++) {
                const int64_t left = c->k - (b0 + b) * c->block;
                const int len = left < c->block ? (int)left : c->block;
                if (pq_minmax(x + (b0 + b) * c->block, len, &lo[b], &hi[b])) return r;
            }
            if (mnb_params(c, lo, hi, nb, r * c->kb + b0, inv, zp) && scale_row < 0) scale_row = r;
            for (int b = 0; b < nb; b++) {
                const int64_t blk = b0 + b;
                const float *xb = x + blk * c->block;
                const int64_t left = c->k - blk * c->block;
                const int len = left < c->block ? (int)left : c->block;
                const float i = inv[b], z = (float)zp[b];
                uint8_t *out = c->B + (size_t)(r * c->kb + blk) * (size_t)c->blob;
                for (int j = 0; j < len; j++) q[j] = pq_round_pos(pq_clampf(xb[j] * i + z, 0.0f, qmax_f));
                for (int j = len; j < c->block; j++) q[j] = 0; /* padding past K: zero bytes */
                if (c->bits == 8) pq_store_u8(q, out, c->block);
                else pq_store_nibble_pairs(q, out, c->block);
                if (zrow) {
                    if (c->bits == 8) zrow[blk] = (uint8_t)zp[b];
                    else if (blk % 2 == 0) zrow[blk / 2] = (uint8_t)((zrow[blk / 2] & 0xf0) | zp[b]);
                    else zrow[blk / 2] = (uint8_t)((zrow[blk / 2] & 0x0f) | (zp[b] << 4));
                }
            }
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

int pq_matmulnbits_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                            int bits, int block, int symmetric, int scale_dtype,
                            uint8_t *B, void *scales, uint8_t *zero_points, int threads, int64_t *bad_row) {
    if (!src || !B || !scales || n < 1 || k < 1 || row_stride < k || src_dtype < 0 || src_dtype > 2)
        return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || block < 16 || block > 256 || (block & (block - 1)))
        return PQ_ERR_ARGS;
    if ((scale_dtype != PQ_F32 && scale_dtype != PQ_F16) || (!symmetric && !zero_points))
        return PQ_ERR_ARGS;
    mnb_ctx c;
    c.src = src; c.dtype = src_dtype; c.bits = bits; c.block = block; c.symmetric = symmetric;
    c.scale_dtype = scale_dtype; c.k = k; c.stride = row_stride;
    c.kb = (k + block - 1) / block;
    c.blob = block * bits / 8;
    c.zp_bytes = (c.kb * bits + 7) / 8;
    c.B = B; c.scales = scales; c.zp = symmetric ? NULL : zero_points;
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, mnb_rows, &c, bad_row);
}
