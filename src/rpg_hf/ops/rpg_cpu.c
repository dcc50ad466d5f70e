/*
 * rpg_hf CPU kernels: generation and ring-gradient fold for GENERATOR_VERSION 1.
 *
 * Plain C99 + pthreads (OpenMP when available), no torch headers: it compiles in well under a
 * second and is loaded with ctypes (see rpg_hf/kernels/cpu.py).  It re-implements ``GENERATOR_VERSION = 1`` of
 * :mod:`rpg_hf.generator` with uint32 arithmetic; the forward is bit-identical to
 * :func:`rpg_hf.ring.generate_layer` (one IEEE product ``ring * m``, then a sign-bit flip, which is
 * exactly what negation does).
 *
 * Layer table (``int64[L][10]``, built by :mod:`rpg_hf.kernels.plan`):
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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define META_WIDTH 10
#define CHUNK_ELEMS 16384
#define TILE 512
#define MAX_THREADS 64
#define PREFETCH_BYTES (1 << 20)

/* v mod d for 32-bit v and d >= 1 (Lemire's fastmod): two multiplications instead of a division */
static inline uint64_t fastmod_m(uint32_t d) { return UINT64_C(0xFFFFFFFFFFFFFFFF) / d + 1; }
static inline uint32_t fastmod(uint32_t v, uint64_t M, uint32_t d) {
    return (uint32_t)(((__uint128_t)(M * v) * d) >> 64);
}

static inline uint32_t hash32(uint32_t v, uint32_t k) {
    v ^= k;
    v ^= v >> 15;
    v *= 0x2C1B3C6Du;
    v ^= v >> 12;
    v *= 0x297A2D39u;
    v ^= v >> 15;
    return v;
}

typedef struct {
    int64_t n, o;
    uint32_t a, b;
    int permute, sign;
    uint32_t ks;
    uint16_t *t0;   /* [b]  round 0, indexed by y,       values < a */
    uint16_t *t1e;  /* [2a] round 1, indexed by x < 2a,  values < b */
    uint16_t *t2e;  /* [2b] round 2, indexed by y < 2b,  values < a */
    uint16_t *modb; /* [3b] v mod b */
    uint64_t *w;    /* [3a] ring offset of row (x mod a), bit 31 set on a partial last row | round 3 << 32 */
    uint32_t r_last, last; /* ring offset of the last row, and how many of its b entries are < n */
} layer_t;

typedef struct { int64_t layer, lo, hi; } chunk_t; /* rows [lo, hi) of a permuted layer, else elements */

typedef struct {
    int64_t L, N, pad;
    layer_t *layers;
    void *scratch;
    chunk_t *chunks;
    int64_t nchunks;
    int64_t next;      /* forward work counter (dynamic scheduling) */
    const void *ring;  /* forward: the ring, or a copy padded to N + pad entries when pad > N */
    int wrap;          /* forward: indices in [N, N + pad) wrap by one subtraction (ring not padded) */
    const void *mult;
    void **ptrs;       /* forward: per-layer outputs; backward: per-layer gradients (NULL: skipped) */
    int dtype;         /* 0: float32, 1: float64 */
    int prefetch;
} job_t;

static void free_job(job_t *job) {
    free(job->layers);
    free(job->scratch);
    free(job->chunks);
}

/* Tables and the chunk list of every layer.  Returns 0 on success. */
static int setup(job_t *job, const int64_t *meta) {
    int64_t L = job->L, N = job->N, bytes = 64, nchunks = 0, pad = 1;
    job->layers = (layer_t *)calloc(L > 0 ? L : 1, sizeof(layer_t));
    if (!job->layers) return 1;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *m = meta + l * META_WIDTH;
        layer_t *ly = &job->layers[l];
        ly->n = m[0]; ly->a = (uint32_t)m[1]; ly->b = (uint32_t)m[2]; ly->o = m[3];
        ly->permute = (int)(m[4] & 1); ly->sign = (int)((m[4] >> 1) & 1);
        ly->ks = (uint32_t)m[9];
        if (ly->permute) {
            bytes += 8 * 3 * (int64_t)ly->a + 2 * (6 * (int64_t)ly->b + 2 * (int64_t)ly->a) + 64;
            if ((int64_t)ly->b > pad) pad = ly->b;
            int64_t rows = CHUNK_ELEMS / ly->b; if (rows < 1) rows = 1;
            nchunks += (ly->a + rows - 1) / rows;
        } else {
            nchunks += (ly->n + CHUNK_ELEMS - 1) / CHUNK_ELEMS;
        }
    }
    job->pad = pad;
    job->scratch = malloc((size_t)bytes);
    job->chunks = (chunk_t *)malloc((size_t)(nchunks > 0 ? nchunks : 1) * sizeof(chunk_t));
    if (!job->scratch || !job->chunks) return 1;
    char *w = (char *)job->scratch;
    int64_t c = 0;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *m = meta + l * META_WIDTH;
        layer_t *ly = &job->layers[l];
        if (ly->permute) {
            uint32_t a = ly->a, b = ly->b;
            uint32_t k0 = (uint32_t)m[5], k1 = (uint32_t)m[6], k2 = (uint32_t)m[7], k3 = (uint32_t)m[8];
            w = (char *)(((uintptr_t)w + 7) & ~(uintptr_t)7);
            ly->w = (uint64_t *)w; w += 8 * 3 * (size_t)a;
            ly->t0 = (uint16_t *)w; w += 2 * (size_t)b;
            ly->t1e = (uint16_t *)w; w += 2 * 2 * (size_t)a;
            ly->t2e = (uint16_t *)w; w += 2 * 2 * (size_t)b;
            ly->modb = (uint16_t *)w; w += 2 * 3 * (size_t)b;
            uint64_t ma = fastmod_m(a), mb = fastmod_m(b);
            for (uint32_t y = 0; y < b; y++) {
                ly->t0[y] = (uint16_t)fastmod(hash32(y, k0), ma, a);
                ly->t2e[y] = ly->t2e[y + b] = (uint16_t)fastmod(hash32(y, k2), ma, a);
                ly->modb[y] = ly->modb[y + b] = ly->modb[y + 2 * b] = (uint16_t)y;
            }
            ly->last = (uint32_t)(ly->n - (int64_t)(a - 1) * b); /* rows < a-1 are full */
            int64_t r = ly->o, step = (int64_t)b % N; /* r = (o + x * b) mod N, incrementally */
            for (uint32_t x = 0; x < a; x++) {
                uint64_t t3 = fastmod(hash32(x, k3), mb, b);
                uint64_t flag = x == a - 1 && ly->last < b ? UINT64_C(0x80000000) : 0;
                if (x == a - 1) ly->r_last = (uint32_t)r;
                ly->t1e[x] = ly->t1e[x + a] = (uint16_t)fastmod(hash32(x, k1), mb, b);
                ly->w[x] = ly->w[x + a] = ly->w[x + 2 * (size_t)a] = (uint64_t)r | flag | (t3 << 32);
                r += step;
                if (r >= N) r -= N;
            }
            int64_t rows = CHUNK_ELEMS / b; if (rows < 1) rows = 1;
            for (int64_t x = 0; x < a; x += rows) {
                job->chunks[c].layer = l; job->chunks[c].lo = x;
                job->chunks[c].hi = x + rows < a ? x + rows : a; c++;
            }
        } else {
            for (int64_t j = 0; j < ly->n; j += CHUNK_ELEMS) {
                job->chunks[c].layer = l; job->chunks[c].lo = j;
                job->chunks[c].hi = j + CHUNK_ELEMS < ly->n ? j + CHUNK_ELEMS : ly->n; c++;
            }
        }
    }
    job->nchunks = c;
    return 0;
}

/* Plain rounds on reduced coordinates (x < a, y < b) and cycle walking: the slow path. */
static inline void rounds_fwd(const layer_t *ly, uint32_t *px, uint32_t *py) {
    uint32_t a = ly->a, b = ly->b, x = *px, y = *py;
    x += ly->t0[y]; x = x >= a ? x - a : x;
    y += ly->t1e[x]; y = y >= b ? y - b : y;
    x += ly->t2e[y]; x = x >= a ? x - a : x;
    y += (uint32_t)((ly->w[x] >> 32) & 0xFFFF); y = y >= b ? y - b : y;
    *px = x; *py = y;
}

static uint32_t slow_index(const layer_t *ly, uint32_t x, uint32_t y) {
    uint64_t b = ly->b, n = (uint64_t)ly->n;
    rounds_fwd(ly, &x, &y);
    uint64_t p = (uint64_t)x * b + y;
    while (p >= n) {
        x = (uint32_t)(p / b); y = (uint32_t)(p % b);
        rounds_fwd(ly, &x, &y);
        p = (uint64_t)x * b + y;
    }
    return (uint32_t)(ly->w[x] & 0x7FFFFFFFu) + y; /* < N + b: an index into the padded ring */
}

/* Padded-ring indices of elements j = x0 * b + y0 + t, t < cnt, of a permuted layer. */
static inline void tile_indices(const layer_t *ly, uint32_t x0, uint32_t y0, uint32_t cnt,
                                uint32_t *restrict idx, const void *prefetch_base, int esize) {
    const uint16_t *restrict t0 = ly->t0, *restrict t1e = ly->t1e, *restrict t2e = ly->t2e;
    const uint16_t *restrict modb = ly->modb;
    const uint64_t *restrict w = ly->w;
    uint32_t any = 0;
    for (uint32_t t = 0; t < cnt; t++) {
        uint32_t y = y0 + t;
        uint32_t x1 = x0 + t0[y];
        uint32_t y1 = y + t1e[x1];
        uint32_t x2 = x1 + t2e[y1];
        uint64_t e = w[x2];
        uint32_t y2 = modb[y1 + (uint32_t)(e >> 32)];
        uint32_t i = (uint32_t)e + y2;
        idx[t] = i;
        any |= i;
        if (prefetch_base) __builtin_prefetch((const char *)prefetch_base + (size_t)(i & 0x7FFFFFFFu) * esize, 1);
    }
    if (any & 0x80000000u) { /* an element landed on the partial last row: below n, or walk its cycle */
        for (uint32_t t = 0; t < cnt; t++) {
            uint32_t i = idx[t];
            if (i & 0x80000000u) {
                i &= 0x7FFFFFFFu;
                idx[t] = i - ly->r_last >= ly->last ? slow_index(ly, x0, y0 + t) : i;
            }
        }
    }
}

/* ---- forward: out[j] = s(j) * (ring[(o + pi(j)) mod N] * m) ---- */

#define DEFINE_FORWARD(NAME, T, UINT)                                                          \
static void NAME(job_t *job, const chunk_t *ch) {                                              \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *ring = (const T *)job->ring;                                                      \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    T *out = (T *)job->ptrs[ch->layer];                                                        \
    const UINT signbit = (UINT)1 << (8 * sizeof(T) - 1);                                       \
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

#define DEFINE_BACKWARD(NAME, T, UINT)                                                         \
static void NAME(job_t *job, const chunk_t *ch, T *restrict acc) {                             \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *g = (const T *)job->ptrs[ch->layer];                                              \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    const UINT signbit = (UINT)1 << (8 * sizeof(T) - 1);                                       \
    if (!g) return;                                                                            \
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

int rpg_abi_version(void) { return 3; }

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
            if (grads[ch->layer]) {
                int64_t lo = ly->permute ? ch->lo * (int64_t)ly->b : ch->lo;
                int64_t hi = ly->permute ? ch->hi * (int64_t)ly->b : ch->hi;
                seen += (hi < ly->n ? hi : ly->n) - lo;
            }
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
