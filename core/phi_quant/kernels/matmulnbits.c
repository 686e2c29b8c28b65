/* ONNX Runtime MatMulNBits blocks, as MLAS BlockwiseQuantizer (quantize_matmul_4bits/8bits) writes them. */
#include "pq_internal.h"

typedef struct {
    const void *src;
    int dtype, bits, block, symmetric, scale_dtype;
    int64_t k, stride, kb, blob, zp_bytes;
    uint8_t *B;
    void *scales;
    uint8_t *zp;
} mnb_ctx;

PQ_HOT static int64_t mnb_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const mnb_ctx *c = (const mnb_ctx *)vctx;
    const int qmax = (1 << c->bits) - 1;
    const float qmax_f = (float)qmax;
    const int mid = 1 << (c->bits - 1);
    int32_t q[256];
    for (int64_t r = r0; r < r1; r++) {
        const void *row = pq_row_ptr(c->src, c->dtype, r, c->stride);
        const float *x = pq_row_f32(row, c->dtype, c->k, buf);
        uint8_t *zrow = c->zp ? c->zp + (size_t)r * (size_t)c->zp_bytes : NULL;
        if (zrow && c->bits == 4) memset(zrow, 0x88, (size_t)c->zp_bytes); /* unused nibble: 8 */
        for (int64_t b = 0; b < c->kb; b++) {
            const float *xb = x + b * c->block;
            const int64_t left = c->k - b * c->block;
            const int len = left < c->block ? (int)left : c->block;
            float min, max;
            if (pq_minmax(xb, len, &min, &max)) return r;
            float scale_f;
            int zp = mid;
            if (c->symmetric) {
                const float ext = pq_absf(max) > pq_absf(min) ? max : min;
                scale_f = ext / (float)(-mid);
            } else {
                const float mn = min < 0.0f ? min : 0.0f;
                const float mx = max > 0.0f ? max : 0.0f;
                scale_f = (mx - mn) / qmax_f;
                float zfp = mn;
                if (scale_f != 0.0f) zfp = 0.0f - mn / scale_f;
                if (zfp < 0.0f) zp = 0;
                else if (zfp > qmax_f) zp = qmax;
                else zp = pq_round_pos(zfp);
            }
            const int64_t si = r * c->kb + b;
            pq_store_scale(c->scales, si, c->scale_dtype, scale_f);
            const float s = pq_load_scale(c->scales, si, c->scale_dtype);
            const float inv = s != 0.0f ? 1.0f / s : 0.0f;
            const float zpf = (float)zp;
            for (int j = 0; j < len; j++) {
                float v = pq_clampf(xb[j] * inv + zpf, 0.0f, qmax_f);
                q[j] = pq_round_pos(v);
            }
            for (int j = len; j < c->block; j++) q[j] = 0; /* padding past K: zero bytes */
            uint8_t *out = c->B + (size_t)si * (size_t)c->blob;
            if (c->bits == 8) {
                for (int j = 0; j < c->block; j++) out[j] = (uint8_t)q[j];
            } else {
                for (int j = 0; j < c->block / 2; j++) out[j] = (uint8_t)(q[2 * j] | (q[2 * j + 1] << 4));
            }
            if (zrow) {
                if (c->bits == 8) zrow[b] = (uint8_t)zp;
                else if (b % 2 == 0) zrow[b / 2] = (uint8_t)((zrow[b / 2] & 0xf0) | zp);
                else zrow[b / 2] = (uint8_t)((zrow[b / 2] & 0x0f) | (zp << 4));
            }
        }
    }
    return -1;
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
    /* the decode buffer covers whole blocks so a padded last block never reads past it */
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : c.kb * block, mnb_rows, &c, bad_row);
}
