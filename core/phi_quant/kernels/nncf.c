/* NNCF integer weight compression (INT4/INT8, SYM/ASYM), as weight_lowering computes it. */
#include "pq_internal.h"

typedef struct {
    const void *src;
    int dtype, bits, symmetric;
    int64_t k, stride, group;
    uint8_t *q; /* [n, k] bytes, or (packed) [n * k / 2] nibble pairs */
    float *scale;
    uint8_t *zp;
    int packed;
} nncf_ctx;

#define PQ_F32_EPS 0x1p-23f /* numpy.finfo(float32).eps */
#define PQ_NNCF_SLICE 256   /* packed output: quants of this many elements go through a stack buffer */

PQ_INLINE void nncf_sym(const float *x, int n, float scale, float half, uint8_t *out) {
    for (int j = 0; j < n; j++) {
        float v = pq_clampf(pq_rint(x[j] / scale), -half, half - 1.0f);
        out[j] = (uint8_t)(int8_t)(int32_t)v;
    }
}

PQ_INLINE void nncf_asym(const float *x, int n, float scale, float z, float qmax, uint8_t *out) {
    for (int j = 0; j < n; j++) {
        float v = pq_clampf(pq_rint(x[j] / scale + z), 0.0f, qmax);
        out[j] = (uint8_t)(int32_t)v;
    }
}

PQ_HOT static int64_t nncf_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const nncf_ctx *c = (const nncf_ctx *)vctx;
    const int64_t groups = c->k / c->group;
    const float half = (float)(1 << (c->bits - 1));
    const float qmax = (float)((1 << c->bits) - 1);
    const int gsz = (int)c->group;
    const int step = c->packed && gsz > PQ_NNCF_SLICE ? PQ_NNCF_SLICE : gsz;
    uint8_t tmp[PQ_NNCF_SLICE];
    for (int64_t r = r0; r < r1; r++) {
        const void *row = pq_row_ptr(c->src, c->dtype, r, c->stride);
        const float *x = pq_row_f32(row, c->dtype, c->k, buf);
        const size_t first = (size_t)r * (size_t)c->k; /* element index of the row's start */
        for (int64_t g = 0; g < groups; g++) {
            const float *xg = x + g * c->group;
            float min, max;
            if (pq_minmax(xg, gsz, &min, &max)) return r;
            float scale, z = 0.0f;
            if (c->symmetric) {
                const float amin = pq_absf(min);
                scale = (amin >= max ? amin : -max) / half;
                scale = pq_absf(scale) < PQ_F32_EPS ? PQ_F32_EPS : scale;
            } else {
                const float mn = min < 0.0f ? min : 0.0f;
                const float mx = max > 0.0f ? max : 0.0f;
                scale = (mx - mn) / qmax;
                scale = pq_absf(scale) < PQ_F32_EPS ? PQ_F32_EPS : scale;
                z = pq_clampf(0.0f - pq_rint(mn / scale), 0.0f, qmax);
                c->zp[r * groups + g] = (uint8_t)(int32_t)z;
            }
            /* quants straight into q, or (packed) a slice at a time into tmp, then as nibble pairs */
            for (int j0 = 0; j0 < gsz; j0 += step) {
                const int m = gsz - j0 < step ? gsz - j0 : step;
                const size_t at = first + (size_t)(g * c->group + j0);
                uint8_t *dst = c->packed ? tmp : c->q + at;
                if (c->symmetric) nncf_sym(xg + j0, m, scale, half, dst);
                else nncf_asym(xg + j0, m, scale, z, qmax, dst);
                if (c->packed) pq_nibble_pairs(tmp, m, c->q + at / 2);
            }
            c->scale[r * groups + g] = scale;
        }
    }
    return -1;
}

static int nncf_run(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride, int bits,
                    int symmetric, int group, uint8_t *q, float *scale, uint8_t *zero_point, int packed,
                    int threads, int64_t *bad_row) {
    if (!src || !q || !scale || n < 1 || k < 1 || row_stride < k || src_dtype < 0 || src_dtype > 2)
        return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || group < 1 || k % group || (!symmetric && !zero_point))
        return PQ_ERR_ARGS;
    if (packed && (bits != 4 || group % 2))
        return PQ_ERR_ARGS;
    nncf_ctx c = {src, src_dtype, bits, symmetric, k, row_stride, group, q, scale, symmetric ? NULL : zero_point, packed};
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, nncf_rows, &c, bad_row);
}

int pq_nncf_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                     int bits, int symmetric, int group,
                     uint8_t *q, float *scale, uint8_t *zero_point, int threads, int64_t *bad_row) {
    return nncf_run(src, src_dtype, n, k, row_stride, bits, symmetric, group, q, scale, zero_point, 0, threads, bad_row);
}

int pq_nncf_quantize_packed(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                            int symmetric, int group,
                            uint8_t *q, float *scale, uint8_t *zero_point, int threads, int64_t *bad_row) {
    return nncf_run(src, src_dtype, n, k, row_stride, 4, symmetric, group, q, scale, zero_point, 1, threads, bad_row);
}

/* OpenVINO u4/i4 bytes of values held one per byte (see pq_nibble_pairs). */
PQ_HOT void pq_pack_nibbles(const uint8_t *src, int64_t n, uint8_t *dst) {
    const int64_t whole = n & ~(int64_t)1;
    for (int64_t i = 0; i < whole; i += 1 << 20) {
        const int64_t m = whole - i < (1 << 20) ? whole - i : (1 << 20);
        pq_nibble_pairs(src + i, (int)m, dst + i / 2);
    }
    if (n & 1) dst[n / 2] = (uint8_t)(src[n - 1] & 0x0fu);
}
