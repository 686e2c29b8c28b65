/*
 * phi-quant kernel: the one public header of the C quantizers.
 *
 * Every entry point reads a row-major [n, k] weight straight from its stored dtype
 * (PQ_F32, PQ_F16 or PQ_BF16; rows `row_stride` elements apart, so a memory-mapped
 * safetensors view or a row slice is read in place), splits rows across `threads`
 * POSIX threads (each row is independent, so results never depend on the thread count)
 * and writes the format's bytes. Rounding follows each vendor's reference exactly;
 * phi_quant/quant/reference.py is the specification.
 *
 * Return codes: PQ_OK, PQ_ERR_NONFINITE (*bad_row = first row holding NaN/Inf),
 * PQ_ERR_SCALE (*bad_row = first row whose float16/bfloat16 scale, minimum or bias would be
 * infinite), PQ_ERR_ARGS (an argument the Python wrapper should have refused), PQ_ERR_NOMEM,
 * PQ_ERR_CODES (a *_pack call got a code outside the format's range; *bad_row = its row).
 *
 * Two kinds of entry point per format: *_quantize chooses the values by the vendor's
 * round-to-nearest rule and packs them in one pass (the fast path); *_pack packs values a recipe
 * chose (codes one byte per element, scales/minimums/biases as float32, stored with the format's
 * rounding). Packing the round-to-nearest values gives the *_quantize bytes exactly.
 *
 * The declarations between the CDEF markers are read verbatim by core/kernel_build.py.
 */
#ifndef PHI_QUANT_KERNEL_H
#define PHI_QUANT_KERNEL_H

#include <stdint.h>

/* CDEF-BEGIN */
#define PQ_OK 0
#define PQ_ERR_NONFINITE 1
#define PQ_ERR_ARGS 2
#define PQ_ERR_NOMEM 3
#define PQ_ERR_SCALE 4
#define PQ_ERR_CODES 5

#define PQ_F32 0
#define PQ_F16 1
#define PQ_BF16 2

#define PQ_GGML_Q4_0 2
#define PQ_GGML_Q4_1 3
#define PQ_GGML_Q8_0 8

/* ggml blocks of 32: k % 32 == 0; dst holds n * (k/32) * block_bytes bytes. */
int pq_ggml_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                     int ggml_type, uint8_t *dst, int threads, int64_t *bad_row);

/* ONNX Runtime MatMulNBits: B [n, kb, block*bits/8], scales [n, kb] (PQ_F32 or PQ_F16),
   zero_points [n, ceil(kb*bits/8)] (NULL when symmetric). kb = ceil(k / block). */
int pq_matmulnbits_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                            int bits, int block, int symmetric, int scale_dtype,
                            uint8_t *B, void *scales, uint8_t *zero_points, int threads, int64_t *bad_row);

/* mlx affine: wq uint32 [n, k*bits/32], scales and biases [n, k/group] in scale_dtype. */
int pq_mlx_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                    int bits, int group, int scale_dtype,
                    uint32_t *wq, void *scales, void *biases, int threads, int64_t *bad_row);

/* NNCF integer compression, group = k for per-channel: q [n, k] (int8 when symmetric,
   uint8 otherwise), scale float32 [n, k/group], zero_point uint8 [n, k/group] (NULL when symmetric). */
int pq_nncf_quantize(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                     int bits, int symmetric, int group,
                     uint8_t *q, float *scale, uint8_t *zero_point, int threads, int64_t *bad_row);

/* The same for 4-bit modes with q written as OpenVINO u4/i4 bytes, [n * k / 2] (element 2i in the
   low nibble of byte i), in the same pass; group must be even. */
int pq_nncf_quantize_packed(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
                            int symmetric, int group,
                            uint8_t *q, float *scale, uint8_t *zero_point, int threads, int64_t *bad_row);

/* OpenVINO u4/i4 packing of n 4-bit values held one per byte: dst[i] = src[2i] & 15 | src[2i+1] << 4
   (dst holds (n + 1) / 2 bytes; an odd count leaves the last high nibble zero). */
void pq_pack_nibbles(const uint8_t *src, int64_t n, uint8_t *dst);
/* Packing given values. Codes are row-major [n, k], one byte per element: ggml 4-bit nibbles 0..15
   (Q8_0: int8), MatMulNBits and mlx unsigned codes, NNCF int8 (symmetric) or uint8 codes. */

/* d (and Q4_1's m; NULL otherwise) float32 [n, k/32], stored as fp16. */
int pq_ggml_pack(const uint8_t *codes, const float *d, const float *m, int64_t n, int64_t k, int ggml_type,
                 uint8_t *dst, int threads, int64_t *bad_row);

/* scales float32 [n, kb] stored as scale_dtype; zero_points uint8 [n, kb] or NULL (symmetric). */
int pq_matmulnbits_pack(const uint8_t *codes, const float *scales, const uint8_t *zero_points, int64_t n, int64_t k,
                        int bits, int block, int scale_dtype, uint8_t *B, void *scales_out, uint8_t *zp_out,
                        int threads, int64_t *bad_row);

/* scales and biases float32 [n, k/group] stored as scale_dtype. */
int pq_mlx_pack(const uint8_t *codes, const float *scales, const float *biases, int64_t n, int64_t k, int bits,
                int group, int scale_dtype, uint32_t *wq, void *scales_out, void *biases_out, int threads,
                int64_t *bad_row);

/* OpenVINO constants: q_out int8/uint8 [n, k] for 8 bits, flat u4/i4 nibbles (element 2i in the low
   nibble of byte i) for 4 bits; scales float32 [n, k/group] stored as scale_dtype; zero_points
   uint8 [n, k/group] (NULL when symmetric) written like q. */
int pq_nncf_pack(const uint8_t *codes, const float *scales, const uint8_t *zero_points, int64_t n, int64_t k, int bits,
                 int symmetric, int group, int scale_dtype, uint8_t *q_out, void *scale_out, uint8_t *zp_out,
                 int threads, int64_t *bad_row);

/* Plain conversion to PQ_F32, PQ_F16 or PQ_BF16 (round to nearest even); dst is [n, k] dense. */
int pq_convert(const void *src, int src_dtype, int64_t n, int64_t k, int64_t row_stride,
               int dst_dtype, void *dst, int threads);

/* Largest thread count the kernel will start (callers may ask for more). */
int pq_max_threads(void);
/* CDEF-END */

#endif
