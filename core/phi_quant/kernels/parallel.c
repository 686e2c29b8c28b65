/* Row-chunk threading and row decoding shared by every kernel. */
#include <stdlib.h>

#include "pq_internal.h"

#if !defined(_WIN32)
#include <pthread.h>
#define PQ_HAVE_PTHREADS 1
#endif

#define PQ_MAX_THREADS 256

int pq_max_threads(void) { return PQ_MAX_THREADS; }

PQ_HOT const float *pq_row_f32(const void *row, int dtype, int64_t n, float *buf) {
    if (dtype == PQ_F32) return (const float *)row;
    const uint16_t *p = (const uint16_t *)row;
    if (dtype == PQ_BF16) {
        for (int64_t i = 0; i < n; i++) buf[i] = pq_bf16_to_f32(p[i]);
    } else {
        for (int64_t i = 0; i < n; i++) buf[i] = pq_f16_to_f32(p[i]);
    }
    return buf;
}

typedef struct {
    pq_rows_fn fn;
    void *ctx;
    int64_t r0, r1, buf_floats;
    int64_t bad;   /* first bad row, or -1 */
    int nomem;
} pq_job;

static void *pq_run_job(void *arg) {
    pq_job *job = (pq_job *)arg;
    float *buf = NULL;
    if (job->buf_floats > 0) {
        buf = (float *)malloc((size_t)job->buf_floats * sizeof(float) + 64);
        if (!buf) { job->nomem = 1; return NULL; }
    }
    job->bad = job->fn(job->ctx, job->r0, job->r1, buf);
    free(buf);
    return NULL;
}

int pq_parallel_rows(int64_t n, int threads, int64_t buf_floats, pq_rows_fn fn, void *ctx, int64_t *bad_row) {
    if (threads < 1) threads = 1;
    if (threads > PQ_MAX_THREADS) threads = PQ_MAX_THREADS;
    if ((int64_t)threads > n) threads = (int)(n > 0 ? n : 1);
    pq_job jobs[PQ_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t].fn = fn;
        jobs[t].ctx = ctx;
        jobs[t].r0 = n * t / threads;
        jobs[t].r1 = n * (t + 1) / threads;
        jobs[t].buf_floats = buf_floats;
        jobs[t].bad = -1;
        jobs[t].nomem = 0;
    }
#ifdef PQ_HAVE_PTHREADS
    pthread_t tids[PQ_MAX_THREADS];
    int started[PQ_MAX_THREADS] = {0};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, pq_run_job, &jobs[t]) == 0;
    pq_run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        else pq_run_job(&jobs[t]); /* could not start a thread: do its rows here */
    }
#else
    for (int t = 0; t < threads; t++) pq_run_job(&jobs[t]);
#endif
    int64_t bad = -1;
    for (int t = 0; t < threads; t++) {
        if (jobs[t].nomem) return PQ_ERR_NOMEM;
        if (jobs[t].bad >= 0 && (bad < 0 || jobs[t].bad < bad)) bad = jobs[t].bad;
    }
    if (bad >= 0) {
        if (bad_row) *bad_row = bad & (PQ_SCALE_FLAG - 1);
        return bad & PQ_SCALE_FLAG ? PQ_ERR_SCALE : PQ_ERR_NONFINITE;
    }
    return PQ_OK;
}
