/* ggml Q4_0, Q4_1 and Q8_0 blocks, as ggml's quantize_row_*_ref write them. */
#include "pq_internal.h"

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
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

PQ_INLINE void put_half(uint8_t *p, float v) {
    uint16_t h = pq_f32_to_f16(v);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

PQ_INLINE int block_q8_0(const float *x, uint8_t *out) {
    const float amax = pq_absmax(x, 32);
    if (!(amax <= 3.40282347e+38f)) return 1;
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(out, d);
    int8_t *qs = (int8_t *)(out + 2);
    int32_t q[32];
    for (int j = 0; j < 32; j++) {
        float v = x[j] * id;
        v = pq_zero_beyond(v, 0x1p30f); /* a non-finite product (1/d overflowed) gives 0 */
        q[j] = (int32_t)pq_roundf(v);
    }
    for (int j = 0; j < 32; j++) qs[j] = (int8_t)q[j];
    return 0;
}

PQ_INLINE int block_q4_0(const float *x, uint8_t *out) {
    /* ggml keeps the signed value of the first element with the largest |x|. One min/max scan
       gives it unless both +a and -a occur; only then is the block scanned for the first. */
    float lo, hi;
    if (pq_minmax(x, 32, &lo, &hi)) return 1;
    float max = 0.0f;
    if (hi > -lo) {
        max = hi;
    } else if (-lo > hi) {
        max = lo;
    } else if (hi != 0.0f) {
        for (int j = 0; j < 32; j++) {
            if (pq_absf(x[j]) == hi) { max = x[j]; break; }
        }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(out, d);
    int32_t q[32];
    for (int j = 0; j < 32; j++) q[j] = nibble_trunc(x[j] * id + 8.5f);
    pack_split_halves(q, out + 2);
    return 0;
}

PQ_INLINE int block_q4_1(const float *x, uint8_t *out) {
    float min, max;
    if (pq_minmax(x, 32, &min, &max)) return 1;
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(out, d);
    put_half(out + 2, min);
    int32_t q[32];
    for (int j = 0; j < 32; j++) q[j] = nibble_trunc((x[j] - min) * id + 0.5f);
    pack_split_halves(q, out + 4);
    return 0;
}

PQ_HOT static int64_t ggml_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    const ggml_ctx *c = (const ggml_ctx *)vctx;
    const int64_t nb = c->k / 32;
    for (int64_t r = r0; r < r1; r++) {
        const void *row = pq_row_ptr(c->src, c->dtype, r, c->stride);
        const float *x = pq_row_f32(row, c->dtype, c->k, buf);
        uint8_t *out = c->dst + (size_t)r * (size_t)c->row_bytes;
        int bad = 0;
        if (c->type == PQ_GGML_Q8_0) {
            for (int64_t b = 0; b < nb; b++) bad |= block_q8_0(x + b * 32, out + b * 34);
        } else if (c->type == PQ_GGML_Q4_0) {
            for (int64_t b = 0; b < nb; b++) bad |= block_q4_0(x + b * 32, out + b * 18);
        } else {
            for (int64_t b = 0; b < nb; b++) bad |= block_q4_1(x + b * 32, out + b * 20);
        }
        if (bad) return r;
    }
    return -1;
}

int pq_ggml_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                     int ggml_type, uint8_t *dst, int threads, int64_t *bad_row) {
    int bytes = ggml_type == PQ_GGML_Q8_0 ? 34 : ggml_type == PQ_GGML_Q4_0 ? 18 : ggml_type == PQ_GGML_Q4_1 ? 20 : 0;
    if (!src || !dst || bytes == 0 || n < 1 || k < 32 || k % 32 || row_stride < k || src_dtype < 0 || src_dtype > 2)
        return PQ_ERR_ARGS;
    ggml_ctx c = {src, src_dtype, ggml_type, k, row_stride, k / 32 * bytes, dst};
    return pq_parallel_rows(n, threads, src_dtype == PQ_F32 ? 0 : k, ggml_rows, &c, bad_row);
}
