/*
 * rpg_hf CPU kernels: generation and ring-gradient fold for GENERATOR_VERSION 1.
 *
 * Plain C99 + pthreads (OpenMP when available), no torch headers: it compiles in well under a
 * second and is loaded with ctypes (see rpg_hf/ops/cpu.py).  It re-implements ``GENERATOR_VERSION = 1`` of
 * :mod:`rpg_hf.core.construction` with uint32 arithmetic; the forward is bit-identical to
 * :func:`rpg_hf.core.reference.generate_layer` (one IEEE product ``ring * m``, then a sign-bit flip, which is
 * exactly what negation does).
 *
 * Layer table (``int64[L][10]``, built by :mod:`rpg_hf.ops.plan`):
 * ``n, a, b, o = start mod N, flags (1: permute, 2: sign flip), k0, k1, k2, k3, k_sign``.
 *
 * Speed notes (the per-element work is a chain of small-table lookups; on a 2-core Zen 2 the
 * scalar code below runs at ~3 ns/element/thread, AVX2 gathers were not faster):
 *
 * * The Feistel round tables (``O(a + b)`` per layer, rebuilt each call: nothing is kept) are
 *   stored *extended* so that intermediate coordinates need no modular reduction:
 *   ``x1 = x0 + T0[y0] < 2a``, ``y1 = y0 + T1e[x1] < 2b`` (``T1e`` has ``2a`` entries),
 *   ``x2 = x1 + T2e[y1] < 3a``, and one 64-bit entry ``W[x2]`` holds ``T3[x2 mod a]`` and the row's
 *   ring offset ``(o + (x2 mod a)·b) mod N``;
 *   ``y2 = MODB[y1 + T3]`` (``3b`` entries).  The ring index is then ``R + y2 < N + b``: the ring is
 *   read with one conditional subtraction (rings shorter than a row: through a copy padded with
 *   its own first ``b`` entries), and the gradient is accumulated into a padded buffer whose tail
 *   is folded back, so no ``mod N`` either.
 * * Elements that leave ``[0, n)`` (on the last, partial row ``x2 ≡ a-1`` beyond its length: fewer
 *   than 1 in ``a``) are recomputed with plain rounds and cycle walking; they are found through a
 *   flag bit (bit 31) that ``W`` sets on that row's ring offset, OR-ed over a tile.
 * * Forward: sequential writes; the ring (cache-resident for small rings, prefetched for large
 *   ones) is gathered.  Backward: the weight gradient is read in order and scatter-added into
 *   ring-sized buffers, one per *part* of the work (about 4 parts per thread, taken dynamically),
 *   summed in part order afterwards: no atomics, deterministic for a given thread count.  The GPU
 *   kernel gathers through π⁻¹ instead (there, scatters would need atomics).
 * * Generator version 2 (blocks of 32 weights): one Feistel evaluation and one sign hash per block
 *   (tables of ``2 (a + b)`` entries for the block grid), then 32 contiguous ring reads and writes —
 *   memory speed.  Its ring offset ``(o + 32 p) mod N`` needs one conditional subtraction when the
 *   layer is not longer than the ring.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "rpg_cpu_tables.h"

/* Element range of a chunk: blocks [lo, hi) of a version-2 layer, rows [lo, hi) of a permuted one, else elements. */
static inline int64_t chunk_lo(const layer_t *ly, const chunk_t *ch) {
    return ly->blocks ? ch->lo * VB : ly->permute ? ch->lo * (int64_t)ly->b : ch->lo;
}
static inline int64_t chunk_hi(const layer_t *ly, const chunk_t *ch) {
    int64_t hi = ly->blocks ? ch->hi * VB : ly->permute ? ch->hi * (int64_t)ly->b : ch->hi;
    return hi < ly->n ? hi : ly->n;
}

/* ---- version 2 forward: block i of the layer is ring[base .. base + 32) * m, lane t negated when
   bit t of hash32(i, k_sign) is set; base = (o + 32 * pi1(i)) mod N.  Contiguous reads and writes.
   Two loops on purpose: the fixed-length one (a whole block that does not pass the ring's end) has
   no index test and vectorizes; the other handles the tail block and a block that wraps. ---- */
#define DEFINE_FORWARD_BLOCKS(NAME, T, UINT)                                                   \
static void NAME(job_t *job, const chunk_t *ch) {                                              \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *ring = (const T *)job->ring;                                                      \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    UINT *out = (UINT *)job->ptrs[ch->layer];                                                  \
    const int64_t N = job->N;                                                                  \
    const int shift = 8 * (int)sizeof(T) - 1;                                                  \
    block_walk_t walk = block_walk(ly, ch->lo);                                                \
    for (int64_t i = ch->lo; i < ch->hi; i++) {                                                \
        int64_t base = block_base(N, ly, block_next(ly, &walk, i));                            \
        uint32_t h = ly->sign ? hash32((uint32_t)i, ly->ks) : 0;                               \
        int64_t j0 = i * VB, cnt = ly->n - j0 < VB ? ly->n - j0 : VB;                          \
        UINT *restrict ob = out + j0;                                                          \
        if (cnt == VB && (!job->wrap || base + VB <= N)) {                                     \
            const T *restrict src = ring + base;                                               \
            for (int t = 0; t < VB; t++) {                                                     \
                T v = src[t] * m;                                                              \
                UINT u;                                                                        \
                memcpy(&u, &v, sizeof u);                                                      \
                ob[t] = u ^ ((UINT)((h >> t) & 1u) << shift);                                  \
            }                                                                                  \
        } else {                                                                               \
            for (int64_t t = 0; t < cnt; t++) {                                                \
                int64_t k = base + t;                                                          \
                if (job->wrap && k >= N) k -= N;                                               \
                T v = ring[k] * m;                                                             \
                UINT u;                                                                        \
                memcpy(&u, &v, sizeof u);                                                      \
                ob[t] = u ^ ((UINT)((h >> t) & 1u) << shift);                                  \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}
DEFINE_FORWARD_BLOCKS(forward_chunk_f32_blocks, float, uint32_t)
DEFINE_FORWARD_BLOCKS(forward_chunk_f64_blocks, double, uint64_t)

#define DEFINE_FORWARD(NAME, T, UINT)                                                          \
static void NAME(job_t *job, const chunk_t *ch) {                                              \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *ring = (const T *)job->ring;                                                      \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    T *out = (T *)job->ptrs[ch->layer];                                                        \
    const UINT signbit = (UINT)1 << (8 * sizeof(T) - 1);                                       \
    if (ly->blocks) {                                                                          \
        NAME##_blocks(job, ch);                                                                \
        return;                                                                                \
    }                                                                                          \
    if (!ly->permute) {                                                                        \
        int64_t idx = (ly->o + ch->lo % job->N) % job->N;                                      \
        for (int64_t j = ch->lo; j < ch->hi; j++) {                                            \
            T v = ring[idx] * m;                                                               \
            if (ly->sign && (hash32((uint32_t)j, ly->ks) >> 31)) v = -v;                       \
            out[j] = v;                                                                        \
            if (++idx == job->N) idx = 0;                                                      \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    uint32_t idx[TILE];                                                                        \
    const uint32_t b = ly->b;                                                                  \
    const void *pf = job->prefetch ? (const void *)ring : NULL;                                \
    for (int64_t x0 = ch->lo; x0 < ch->hi; x0++) {                                             \
        int64_t j0 = x0 * (int64_t)b;                                                          \
        uint32_t ylim = (uint32_t)(ly->n - j0 < (int64_t)b ? ly->n - j0 : (int64_t)b);         \
        for (uint32_t y0 = 0; y0 < ylim; y0 += TILE) {                                         \
            uint32_t cnt = ylim - y0 < TILE ? ylim - y0 : TILE;                                \
            tile_indices(ly, (uint32_t)x0, y0, cnt, idx, pf, (int)sizeof(T));                  \
            T *restrict o = out + j0 + y0;                                                     \
            if (job->wrap) {                                                                   \
                const uint32_t n_ring = (uint32_t)job->N;                                      \
                for (uint32_t t = 0; t < cnt; t++) {                                           \
                    uint32_t k = idx[t];                                                       \
                    o[t] = ring[k >= n_ring ? k - n_ring : k] * m;                             \
                }                                                                              \
            } else {                                                                           \
                for (uint32_t t = 0; t < cnt; t++) o[t] = ring[idx[t]] * m;                    \
            }                                                                                  \
            if (ly->sign) {                                                                    \
                UINT *restrict ob = (UINT *)o;                                                 \
                uint32_t jb = (uint32_t)(j0 + y0);                                             \
                for (uint32_t t = 0; t < cnt; t++)                                             \
                    ob[t] ^= (UINT)(hash32(jb + t, ly->ks) >> 31) * signbit;                   \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_FORWARD(forward_chunk_f32, float, uint32_t)
DEFINE_FORWARD(forward_chunk_f64, double, uint64_t)

/* ---- backward: acc[(o + pi(j)) mod N] += s(j) * (g[j] * m), into a padded private buffer ---- */

/* ---- version 2 backward: acc[base + t] += s(j) * (g[j] * m) over each block's 32 lanes (acc is padded
   by at least 32 entries, so a block never wraps inside it) ---- */
#define DEFINE_BACKWARD_BLOCKS(NAME, T, UINT)                                                  \
static void NAME(job_t *job, const chunk_t *ch, T *restrict acc) {                             \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *g = (const T *)job->ptrs[ch->layer];                                              \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    const int shift = 8 * (int)sizeof(T) - 1;                                                  \
    block_walk_t walk = block_walk(ly, ch->lo);                                                \
    for (int64_t i = ch->lo; i < ch->hi; i++) {                                                \
        int64_t base = block_base(job->N, ly, block_next(ly, &walk, i));                       \
        uint32_t h = ly->sign ? hash32((uint32_t)i, ly->ks) : 0;                               \
        int64_t j0 = i * VB, cnt = ly->n - j0 < VB ? ly->n - j0 : VB;                          \
        const T *restrict gi = g + j0;                                                         \
        T *restrict dst = acc + base;                                                          \
        for (int64_t t = 0; t < cnt; t++) {                                                    \
            T v = gi[t] * m;                                                                   \
            UINT u;                                                                            \
            memcpy(&u, &v, sizeof u);                                                          \
            u ^= (UINT)((h >> t) & 1u) << shift;                                               \
            memcpy(&v, &u, sizeof u);                                                          \
            dst[t] += v;                                                                       \
        }                                                                                      \
    }                                                                                          \
}
DEFINE_BACKWARD_BLOCKS(backward_chunk_f32_blocks, float, uint32_t)
DEFINE_BACKWARD_BLOCKS(backward_chunk_f64_blocks, double, uint64_t)

#define DEFINE_BACKWARD(NAME, T, UINT)                                                         \
static void NAME(job_t *job, const chunk_t *ch, T *restrict acc) {                             \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *g = (const T *)job->ptrs[ch->layer];                                              \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    const UINT signbit = (UINT)1 << (8 * sizeof(T) - 1);                                       \
    if (!g) return;                                                                            \
    if (ly->blocks) {                                                                          \
        NAME##_blocks(job, ch, acc);                                                           \
        return;                                                                                \
    }                                                                                          \
    if (!ly->permute) {                                                                        \
        int64_t idx = (ly->o + ch->lo % job->N) % job->N;                                      \
        for (int64_t j = ch->lo; j < ch->hi; j++) {                                            \
            T v = g[j] * m;                                                                    \
            if (ly->sign && (hash32((uint32_t)j, ly->ks) >> 31)) v = -v;                       \
            acc[idx] += v;                                                                     \
            if (++idx == job->N) idx = 0;                                                      \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    uint32_t idx[TILE];                                                                        \
    T vbuf[TILE];                                                                              \
    const uint32_t b = ly->b;                                                                  \
    const void *pf = job->prefetch ? (const void *)acc : NULL;                                 \
    for (int64_t x0 = ch->lo; x0 < ch->hi; x0++) {                                             \
        int64_t j0 = x0 * (int64_t)b;                                                          \
        uint32_t ylim = (uint32_t)(ly->n - j0 < (int64_t)b ? ly->n - j0 : (int64_t)b);         \
        for (uint32_t y0 = 0; y0 < ylim; y0 += TILE) {                                         \
            uint32_t cnt = ylim - y0 < TILE ? ylim - y0 : TILE;                                \
            tile_indices(ly, (uint32_t)x0, y0, cnt, idx, pf, (int)sizeof(T));                  \
            const T *restrict gi = g + j0 + y0;                                                \
            for (uint32_t t = 0; t < cnt; t++) vbuf[t] = gi[t] * m;                            \
            if (ly->sign) {                                                                    \
                UINT *restrict vb = (UINT *)vbuf;                                              \
                uint32_t jb = (uint32_t)(j0 + y0);                                             \
                for (uint32_t t = 0; t < cnt; t++)                                             \
                    vb[t] ^= (UINT)(hash32(jb + t, ly->ks) >> 31) * signbit;                   \
            }                                                                                  \
            for (uint32_t t = 0; t < cnt; t++) acc[idx[t]] += vbuf[t];                         \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_BACKWARD(backward_chunk_f32, float, uint32_t)
DEFINE_BACKWARD(backward_chunk_f64, double, uint64_t)

/* ---- threads ---- */

static void *forward_worker(void *arg) {
    job_t *job = (job_t *)arg;
    for (;;) {
        int64_t c = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (c >= job->nchunks) break;
        if (job->dtype == 0) forward_chunk_f32(job, &job->chunks[c]);
        else forward_chunk_f64(job, &job->chunks[c]);
    }
    return NULL;
}

/* Backward work is cut into `nparts` parts (contiguous chunk ranges of about equal size), each
   with its own padded accumulator; threads take parts dynamically, and the accumulators are summed
   in part order afterwards, so the result depends on the part count only (fixed by the thread count). */
typedef struct {
    job_t *job;
    int64_t nparts, next, len;  /* len: N + pad */
    int64_t *c0;                /* part p covers chunks [c0[p], c0[p + 1]) */
    char *bufs;                 /* nparts accumulators of len elements */
    void *acc;                  /* output: N elements */
    int64_t rnext;              /* reduction work counter */
} bwd_t;

#define REDUCE_BLOCK 16384

static void *backward_worker(void *arg) {
    bwd_t *w = (bwd_t *)arg;
    job_t *job = w->job;
    size_t esize = job->dtype == 0 ? sizeof(float) : sizeof(double);
    for (;;) {
        int64_t p = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED);
        if (p >= w->nparts) break;
        void *buf = w->bufs + (size_t)p * (size_t)w->len * esize;
        memset(buf, 0, (size_t)w->len * esize);
        for (int64_t c = w->c0[p]; c < w->c0[p + 1]; c++) {
            if (job->dtype == 0) backward_chunk_f32(job, &job->chunks[c], (float *)buf);
            else backward_chunk_f64(job, &job->chunks[c], (double *)buf);
        }
    }
    return NULL;
}

#define DEFINE_REDUCE(NAME, T)                                                                 \
static void NAME(bwd_t *w, int64_t lo, int64_t hi) {                                           \
    T *d = (T *)w->acc;                                                                        \
    for (int64_t p = 0; p < w->nparts; p++) {                                                  \
        const T *s = (const T *)w->bufs + (size_t)p * (size_t)w->len;                          \
        for (int64_t i = lo; i < hi; i++) d[i] += s[i];                                        \
    }                                                                                          \
}
DEFINE_REDUCE(reduce_f32, float)
DEFINE_REDUCE(reduce_f64, double)

static void *reduce_worker(void *arg) {
    bwd_t *w = (bwd_t *)arg;
    int64_t N = w->job->N;
    for (;;) {
        int64_t blk = __atomic_fetch_add(&w->rnext, 1, __ATOMIC_RELAXED);
        int64_t lo = blk * REDUCE_BLOCK;
        if (lo >= N) break;
        int64_t hi = lo + REDUCE_BLOCK < N ? lo + REDUCE_BLOCK : N;
        if (w->job->dtype == 0) reduce_f32(w, lo, hi);
        else reduce_f64(w, lo, hi);
    }
    return NULL;
}

static int clamp_threads(int nthreads, int64_t work) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if ((int64_t)nthreads * 4 * CHUNK_ELEMS > work) nthreads = (int)(work / (4 * CHUNK_ELEMS)) + 1;
    return nthreads < 1 ? 1 : nthreads;
}

/* Run fn(args + t * stride) on nthreads threads.  With OpenMP this is torch's own thread pool (the
   library then links the libgomp that torch has already loaded): its workers, still spinning after
   torch's last parallel op, take the work instead of competing with new threads for the cores.
   Every worker pulls work from shared counters, so fewer threads than asked still do all of it. */
static void run_threads(void *(*fn)(void *), void *args, size_t stride, int nthreads) {
#ifdef _OPENMP
    if (nthreads > 1) {
        #pragma omp parallel num_threads(nthreads)
        fn((char *)args + (size_t)omp_get_thread_num() * stride);
        return;
    }
#endif
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&tid[t], NULL, fn, (char *)args + t * stride) == 0;
    fn(args);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else fn((char *)args + t * stride);
    }
}

int rpg_abi_version(void) { return 6; }

int rpg_forward(int dtype, const void *ring, int64_t N, int64_t L, const int64_t *meta,
                const void *mult, void **outs, int nthreads) {
    job_t job;
    memset(&job, 0, sizeof(job));
    job.L = L; job.N = N; job.mult = mult; job.ptrs = outs; job.dtype = dtype;
    if (setup(&job, meta)) { free_job(&job); return 1; }
    size_t esize = dtype == 0 ? sizeof(float) : sizeof(double);
    char *padded = NULL; /* only tiny rings (N < the widest row) are read through a padded copy */
    job.wrap = job.pad <= N;
    if (!job.wrap) {
        padded = (char *)malloc((size_t)(N + job.pad) * esize);
        if (!padded) { free_job(&job); return 1; }
        for (int64_t i = 0; i < N + job.pad; i += N) {
            int64_t len = N + job.pad - i < N ? N + job.pad - i : N;
            memcpy(padded + (size_t)i * esize, ring, (size_t)len * esize);
        }
    }
    job.ring = padded ? (const void *)padded : ring;
    job.prefetch = (int64_t)esize * N > PREFETCH_BYTES;
    int64_t total = 0;
    for (int64_t l = 0; l < L; l++) total += job.layers[l].n;
    nthreads = clamp_threads(nthreads, total);
    run_threads(forward_worker, &job, 0, nthreads); /* stride 0: every thread shares the job */
    free(padded);
    free_job(&job);
    return 0;
}

int rpg_backward(int dtype, void *acc, int64_t N, int64_t L, const int64_t *meta,
                 const void *mult, void **grads, int nthreads) {
    job_t job;
    memset(&job, 0, sizeof(job));
    job.L = L; job.N = N; job.mult = mult; job.ptrs = grads; job.dtype = dtype;
    if (setup(&job, meta)) { free_job(&job); return 1; }
    size_t esize = dtype == 0 ? sizeof(float) : sizeof(double);
    job.prefetch = (int64_t)esize * N > PREFETCH_BYTES;
    int64_t total = 0;
    for (int64_t l = 0; l < L; l++) if (grads[l]) total += job.layers[l].n;
    nthreads = clamp_threads(nthreads, total);
    bwd_t w;
    memset(&w, 0, sizeof(w));
    w.job = &job; w.acc = acc; w.len = N + job.pad;
    /* 4 parts per thread for load balance, fewer when the accumulators would take over 16 MiB */
    int64_t nparts = 4 * (int64_t)nthreads, cap = ((int64_t)16 << 20) / (w.len * (int64_t)esize);
    if (nparts > cap) nparts = cap;
    if (nparts < nthreads) nparts = nthreads;
    w.nparts = nparts;
    w.c0 = (int64_t *)malloc((size_t)(nparts + 1) * sizeof(int64_t));
    w.bufs = (char *)malloc((size_t)nparts * (size_t)w.len * esize);
    if (!w.c0 || !w.bufs) { free(w.c0); free(w.bufs); free_job(&job); return 1; }
    int64_t c = 0, seen = 0;
    for (int64_t p = 0; p < nparts; p++) {
        w.c0[p] = c;
        int64_t goal = total * (p + 1) / nparts;
        while (c < job.nchunks && (p == nparts - 1 || seen < goal)) {
            const chunk_t *ch = &job.chunks[c];
            const layer_t *ly = &job.layers[ch->layer];
            if (grads[ch->layer]) seen += chunk_hi(ly, ch) - chunk_lo(ly, ch);
            c++;
        }
    }
    w.c0[nparts] = c;
    run_threads(backward_worker, &w, 0, nthreads);
    run_threads(reduce_worker, &w, 0, nthreads);  /* acc[i] = sum over parts, in part order */
    for (int64_t p = 0; p < nparts; p++) {         /* the padding: ring entries (N + k) mod N */
        if (dtype == 0) {
            const float *s = (const float *)w.bufs + (size_t)p * (size_t)w.len;
            for (int64_t k = N; k < w.len; k++) ((float *)acc)[k % N] += s[k];
        } else {
            const double *s = (const double *)w.bufs + (size_t)p * (size_t)w.len;
            for (int64_t k = N; k < w.len; k++) ((double *)acc)[k % N] += s[k];
        }
    }
    free(w.c0);
    free(w.bufs);
    free_job(&job);
    return 0;
}
