/* Plain dtype conversion (f32/f16/bf16 -> f32/f16/bf16), round to nearest even. */
#include "pq_internal.h"

typedef struct {
    const void *src;
    int dtype, dst_dtype;
    int64_t k, stride;
    void *dst;
} conv_ctx;

PQ_HOT static int64_t conv_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const conv_ctx *c = (const conv_ctx *)vctx;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = pq_row_f32(pq_row_ptr(c->src, c->dtype, r, c->stride), c->dtype, c->k, buf);
        if (c->dst_dtype == PQ_F32) {
            memcpy((float *)c->dst + r * c->k, x, (size_t)c->k * 4);
        } else if (c->dst_dtype == PQ_F16) {
            uint16_t *o = (uint16_t *)c->dst + r * c->k;
            for (int64_t j = 0; j < c->k; j++) o[j] = pq_f32_to_f16(x[j]);
        } else {
            uint16_t *o = (uint16_t *)c->dst + r * c->k;
            for (int64_t j = 0; j < c->k; j++) o[j] = pq_f32_to_bf16(x[j]);
        }
    }
    return -1;
}

int pq_convert(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
               int dst_dtype, void *dst, int threads) {
    if (!src || !dst || n < 1 || k < 1 || row_stride < k || src_dtype < 0 || src_dtype > 2 || dst_dtype < 0 || dst_dtype > 2)
        return PQ_ERR_ARGS;
    conv_ctx c = {src, src_dtype, dst_dtype, k, row_stride, dst};
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, conv_rows, &c, NULL);
}
