/* Packing given values (codes, scales, zero points / offsets) into each format's bytes.
 *
 * The quantizers in ggml.c, matmulnbits.c, mlx.c and nncf.c choose the values by the vendor's
 * round-to-nearest rule and pack them in one pass; these entry points only pack, so that any
 * recipe (clipping search, HQQ, GPTQ, ...) that chooses values itself writes exactly the bytes
 * the format defines. Scales (and ggml minimums, mlx biases) arrive as float32 and are stored
 * with the format's own rounding (IEEE fp16 / bf16 round to nearest even), so a recipe that
 * wants its codes to match the stored scale passes scales that the stored type holds exactly.
 * Every code is range-checked: an out-of-range code is a recipe bug, reported as PQ_ERR_CODES.
 */
#include "pq_internal.h"

#define PQ_FLT_MAX 3.40282347e+38f

/* 1 when a float32 scale cannot be stored: not finite, or infinite once rounded to `dtype`. */
PQ_INLINE int bad_scale(float v, int dtype) {
    if (!(pq_absf(v) <= PQ_FLT_MAX)) return 1;
    if (dtype == PQ_F16) return pq_half_inf(pq_f32_to_f16(v), PQ_F16);
    if (dtype == PQ_BF16) return pq_half_inf(pq_f32_to_bf16(v), PQ_BF16);
    return 0;
}

/* What a row function returns for a bad code (a recipe bug; reported before scale overflows). */
#define CODE_FLAG ((int64_t)1 << 61)

/* ---- ggml Q4_0 / Q4_1 / Q8_0 ---- */

typedef struct {
    const uint8_t *codes;
    const float *d, *m;
    int type;
    int64_t k;
    uint8_t *dst;
} ggml_pack_ctx;

static int64_t ggml_pack_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    (void)buf;
    const ggml_pack_ctx *c = (const ggml_pack_ctx *)vctx;
    const int64_t nb = c->k / 32;
    const int bytes = c->type == PQ_GGML_Q8_0 ? 34 : c->type == PQ_GGML_Q4_0 ? 18 : 20;
    int64_t scale_row = -1;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = c->codes + (size_t)r * (size_t)c->k;
        uint8_t *out = c->dst + (size_t)r * (size_t)(nb * bytes);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = out + b * bytes;
            const uint8_t *qb = q + b * 32;
            const float d = c->d[r * nb + b];
            const uint16_t hd = pq_f32_to_f16(d);
            if (bad_scale(d, PQ_F16) && scale_row < 0) scale_row = r;
            memcpy(o, &hd, 2);
            if (c->type == PQ_GGML_Q8_0) { /* any int8 is a valid Q8_0 code */
                memcpy(o + 2, qb, 32);
                continue;
            }
            if (c->type == PQ_GGML_Q4_1) {
                const float m = c->m[r * nb + b];
                const uint16_t hm = pq_f32_to_f16(m);
                if (bad_scale(m, PQ_F16) && scale_row < 0) scale_row = r;
                memcpy(o + 2, &hm, 2);
            }
            uint8_t *qs = o + (c->type == PQ_GGML_Q4_1 ? 4 : 2);
            for (int j = 0; j < 16; j++) {
                if ((qb[j] | qb[j + 16]) > 15) return CODE_FLAG + r;
                qs[j] = (uint8_t)(qb[j] | (qb[j + 16] << 4));
            }
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

/* ---- ONNX Runtime MatMulNBits ---- */

typedef struct {
    const uint8_t *codes, *zps;
    const float *scales;
    int bits, block, scale_dtype;
    int64_t k, kb, blob, zp_bytes;
    uint8_t *B, *zp_out;
    void *scales_out;
} mnb_pack_ctx;

static int64_t mnb_pack_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    (void)buf;
    const mnb_pack_ctx *c = (const mnb_pack_ctx *)vctx;
    const int qmax = (1 << c->bits) - 1;
    int64_t scale_row = -1;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = c->codes + (size_t)r * (size_t)c->k;
        for (int64_t j = 0; j < c->k; j++)
            if (q[j] > qmax) return CODE_FLAG + r;
        uint8_t *out = c->B + (size_t)r * (size_t)(c->kb * c->blob);
        memset(out, 0, (size_t)(c->kb * c->blob)); /* padding past K: zero bytes */
        if (c->bits == 8) memcpy(out, q, (size_t)c->k);
        else
            for (int64_t j = 0; j < c->k; j++) out[j / 2] |= (uint8_t)(q[j] << ((j & 1) * 4));
        for (int64_t b = 0; b < c->kb; b++) {
            const float s = c->scales[r * c->kb + b];
            if (bad_scale(s, c->scale_dtype) && scale_row < 0) scale_row = r;
            pq_store_scale(c->scales_out, r * c->kb + b, c->scale_dtype, s);
        }
        if (c->zps) {
            const uint8_t *z = c->zps + (size_t)r * (size_t)c->kb;
            uint8_t *zrow = c->zp_out + (size_t)r * (size_t)c->zp_bytes;
            if (c->bits == 4) memset(zrow, 0x88, (size_t)c->zp_bytes); /* unused nibble: 8 */
            for (int64_t b = 0; b < c->kb; b++) {
                if (z[b] > qmax) return CODE_FLAG + r;
                if (c->bits == 8) zrow[b] = z[b];
                else if (b % 2 == 0) zrow[b / 2] = (uint8_t)((zrow[b / 2] & 0xf0) | z[b]);
                else zrow[b / 2] = (uint8_t)((zrow[b / 2] & 0x0f) | (z[b] << 4));
            }
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

/* ---- mlx affine ---- */

typedef struct {
    const uint8_t *codes;
    const float *scales, *biases;
    int bits, group, scale_dtype;
    int64_t k;
    uint32_t *wq;
    void *scales_out, *biases_out;
} mlx_pack_ctx;

static int64_t mlx_pack_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    (void)buf;
    const mlx_pack_ctx *c = (const mlx_pack_ctx *)vctx;
    const int qmax = (1 << c->bits) - 1;
    const int per_word = 32 / c->bits;
    const int64_t groups = c->k / c->group, words = c->k / per_word;
    int64_t scale_row = -1;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = c->codes + (size_t)r * (size_t)c->k;
        uint32_t *out = c->wq + (size_t)r * (size_t)words;
        for (int64_t w = 0; w < words; w++) {
            uint32_t word = 0;
            for (int e = 0; e < per_word; e++) {
                const uint8_t v = q[w * per_word + e];
                if (v > qmax) return CODE_FLAG + r;
                word |= (uint32_t)v << (e * c->bits);
            }
            out[w] = word;
        }
        for (int64_t g = 0; g < groups; g++) {
            const int64_t i = r * groups + g;
            if ((bad_scale(c->scales[i], c->scale_dtype) || bad_scale(c->biases[i], c->scale_dtype)) && scale_row < 0)
                scale_row = r;
            pq_store_scale(c->scales_out, i, c->scale_dtype, c->scales[i]);
            pq_store_scale(c->biases_out, i, c->scale_dtype, c->biases[i]);
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

/* ---- NNCF / OpenVINO constants ---- */

typedef struct {
    const uint8_t *codes, *zps;
    const float *scales;
    int bits, symmetric, scale_dtype;
    int64_t k, group;
    uint8_t *q_out, *zp_out;
    void *scale_out;
} nncf_pack_ctx;

/* Set element i of a flat 4-bit array (element 2m in the low nibble of byte m). */
PQ_INLINE void put_nibble(uint8_t *p, int64_t i, uint8_t v) {
    uint8_t *b = p + i / 2;
    *b = (i & 1) ? (uint8_t)((*b & 0x0f) | (v << 4)) : (uint8_t)((*b & 0xf0) | (v & 0x0f));
}

static int64_t nncf_pack_rows(void *vctx, int64_t r0, int64_t r1, float *buf) {
    (void)buf;
    const nncf_pack_ctx *c = (const nncf_pack_ctx *)vctx;
    const int64_t groups = c->k / c->group;
    const int lo = c->symmetric ? -(1 << (c->bits - 1)) : 0;
    const int hi = c->symmetric ? (1 << (c->bits - 1)) - 1 : (1 << c->bits) - 1;
    int64_t scale_row = -1;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = c->codes + (size_t)r * (size_t)c->k;
        for (int64_t j = 0; j < c->k; j++) {
            const int v = c->symmetric ? (int)(int8_t)q[j] : (int)q[j];
            if (v < lo || v > hi) return CODE_FLAG + r;
            if (c->bits == 8) c->q_out[r * c->k + j] = q[j];
            else put_nibble(c->q_out, r * c->k + j, q[j]);
        }
        for (int64_t g = 0; g < groups; g++) {
            const int64_t i = r * groups + g;
            if (bad_scale(c->scales[i], c->scale_dtype) && scale_row < 0) scale_row = r;
            pq_store_scale(c->scale_out, i, c->scale_dtype, c->scales[i]);
            if (c->zps) {
                if (c->zps[i] > (1 << c->bits) - 1) return CODE_FLAG + r;
                if (c->bits == 8) c->zp_out[i] = c->zps[i];
                else put_nibble(c->zp_out, i, c->zps[i]);
            }
        }
    }
    return scale_row < 0 ? -1 : PQ_SCALE_FLAG + scale_row;
}

/* ---- entry points ---- */

/* pq_parallel_rows reports PQ_ERR_NONFINITE for a returned row without the scale flag: here that
   means a bad code, so translate it. */
static int pack_rows(int64_t n, int threads, pq_rows_fn fn, void *ctx, int64_t *bad_row) {
    int64_t bad = -1;
    int rc = pq_parallel_rows(n, threads, 0, fn, ctx, &bad);
    if (bad_row) *bad_row = bad & (CODE_FLAG - 1);
    if (rc == PQ_ERR_NONFINITE && (bad & CODE_FLAG)) return PQ_ERR_CODES;
    return rc;
}

int pq_ggml_pack(const uint8_t *codes, const float *d, const float *m, int64_t n, int64_t k, int ggml_type,
                 uint8_t *dst, int threads, int64_t *bad_row) {
    int ok = ggml_type == PQ_GGML_Q8_0 || ggml_type == PQ_GGML_Q4_0 || ggml_type == PQ_GGML_Q4_1;
    if (!codes || !d || !dst || !ok || n < 1 || k < 32 || k % 32 || (ggml_type == PQ_GGML_Q4_1 && !m))
        return PQ_ERR_ARGS;
    ggml_pack_ctx c = {codes, d, m, ggml_type, k, dst};
    return pack_rows(n, threads, ggml_pack_rows, &c, bad_row);
}

int pq_matmulnbits_pack(const uint8_t *codes, const float *scales, const uint8_t *zero_points, int64_t n, int64_t k,
                        int bits, int block, int scale_dtype, uint8_t *B, void *scales_out, uint8_t *zp_out,
                        int threads, int64_t *bad_row) {
    if (!codes || !scales || !B || !scales_out || n < 1 || k < 1) return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || block < 16 || block > 256 || (block & (block - 1))) return PQ_ERR_ARGS;
    if ((scale_dtype != PQ_F32 && scale_dtype != PQ_F16) || (zero_points && !zp_out)) return PQ_ERR_ARGS;
    mnb_pack_ctx c;
    c.codes = codes; c.zps = zero_points; c.scales = scales;
    c.bits = bits; c.block = block; c.scale_dtype = scale_dtype; c.k = k;
    c.kb = (k + block - 1) / block;
    c.blob = block * bits / 8;
    c.zp_bytes = (c.kb * bits + 7) / 8;
    c.B = B; c.zp_out = zp_out; c.scales_out = scales_out;
    return pack_rows(n, threads, mnb_pack_rows, &c, bad_row);
}

int pq_mlx_pack(const uint8_t *codes, const float *scales, const float *biases, int64_t n, int64_t k, int bits,
                int group, int scale_dtype, uint32_t *wq, void *scales_out, void *biases_out, int threads,
                int64_t *bad_row) {
    if (!codes || !scales || !biases || !wq || !scales_out || !biases_out || n < 1 || k < 1) return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || (group != 32 && group != 64 && group != 128) || k % group) return PQ_ERR_ARGS;
    if (scale_dtype < 0 || scale_dtype > 2) return PQ_ERR_ARGS;
    mlx_pack_ctx c = {codes, scales, biases, bits, group, scale_dtype, k, wq, scales_out, biases_out};
    return pack_rows(n, threads, mlx_pack_rows, &c, bad_row);
}

int pq_nncf_pack(const uint8_t *codes, const float *scales, const uint8_t *zero_points, int64_t n, int64_t k, int bits,
                 int symmetric, int group, int scale_dtype, uint8_t *q_out, void *scale_out, uint8_t *zp_out,
                 int threads, int64_t *bad_row) {
    if (!codes || !scales || !q_out || !scale_out || n < 1 || k < 1) return PQ_ERR_ARGS;
    if ((bits != 4 && bits != 8) || group < 1 || k % group || (!symmetric && (!zero_points || !zp_out)))
        return PQ_ERR_ARGS;
    if (scale_dtype < 0 || scale_dtype > 2) return PQ_ERR_ARGS;
    if (bits == 4) { /* nibbles run over the flat array: rows may share a byte */
        memset(q_out, 0, (size_t)((n * k + 1) / 2));
        if (!symmetric) memset(zp_out, 0, (size_t)((n * (k / group) + 1) / 2));
        if ((k % 2) || ((k / group) % 2)) threads = 1;
    }
    nncf_pack_ctx c = {codes, symmetric ? NULL : zero_points, scales, bits, symmetric, scale_dtype, k, group,
                       q_out, symmetric ? NULL : zp_out, scale_out};
    return pack_rows(n, threads, nncf_pack_rows, &c, bad_row);
}
