"""C source of the CPU kernels (kept as a string so it ships with the Python package).

Plain C99 + pthreads, no torch headers: it compiles in well under a second and is loaded with
ctypes (see :mod:`rpg_hf.kernels.cpu`).  It re-implements ``GENERATOR_VERSION = 1`` of
:mod:`rpg_hf.generator` with uint32 arithmetic; the forward is bit-identical to
:func:`rpg_hf.ring.generate_layer` (one IEEE product ``ring * m``, then a sign-bit flip).

Layer table (``int64[L][META_WIDTH]``, built by :mod:`rpg_hf.kernels.plan`):
``n, a, b, o = start mod N, flags (1: permute, 2: sign flip), k0, k1, k2, k3, k_sign``.
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define META_WIDTH 10
#define CHUNK_ELEMS 16384
#define RING_BLOCK 4096
#define TILE 512

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
    int64_t n, a, b, o, ring;
    int permute, sign;
    uint32_t ks;
    uint16_t *t0, *t1, *t2, *t3; /* t0, t2: indexed by y (b values < a); t1, t3: by x (a values < b) */
    uint32_t *rowbase;           /* (o + x * b) mod N for x < a, when b <= N < 2**31; else NULL */
} layer_t;

typedef struct { int64_t layer, lo, hi; } chunk_t; /* rows [lo, hi) of a permuted layer, else elements */

typedef struct {
    int64_t L, N;
    layer_t *layers;
    void *scratch;
    chunk_t *chunks;
    int64_t nchunks;
    int64_t next;  /* work counter (dynamic scheduling) */
    const void *ring;
    const void *mult;
    void **outs;    /* forward: per-layer outputs; backward: per-layer gradients (NULL: skipped) */
    void *acc;      /* backward: ring gradient */
    int dtype;      /* 0: float32, 1: float64 */
} job_t;

static void free_job(job_t *job) {
    free(job->layers);
    free(job->scratch);
    free(job->chunks);
}

/* Round tables, row bases and the chunk list for all layers.  Returns 0 on success. */
static int setup(job_t *job, const int64_t *meta, int with_rowbase, int64_t chunk_rows_elems) {
    int64_t L = job->L, N = job->N, words = 0, nchunks = 0;
    job->layers = (layer_t *)calloc(L > 0 ? L : 1, sizeof(layer_t));
    if (!job->layers) return 1;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *m = meta + l * META_WIDTH;
        layer_t *ly = &job->layers[l];
        ly->n = m[0]; ly->a = m[1]; ly->b = m[2]; ly->o = m[3]; ly->ring = N;
        ly->permute = (int)(m[4] & 1); ly->sign = (int)((m[4] >> 1) & 1);
        ly->ks = (uint32_t)m[9];
        if (ly->permute) {
            words += ly->a + ly->b + 2;
            if (with_rowbase && ly->b <= N && N < ((int64_t)1 << 31)) words += ly->a;
            int64_t rows = chunk_rows_elems / ly->b; if (rows < 1) rows = 1;
            nchunks += (ly->a + rows - 1) / rows;
        } else {
            nchunks += (ly->n + chunk_rows_elems - 1) / chunk_rows_elems;
        }
    }
    job->scratch = malloc((size_t)(words > 0 ? words : 1) * sizeof(uint32_t) + 64);
    job->chunks = (chunk_t *)malloc((size_t)(nchunks > 0 ? nchunks : 1) * sizeof(chunk_t));
    if (!job->scratch || !job->chunks) return 1;
    uint32_t *w = (uint32_t *)job->scratch;
    int64_t c = 0;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *m = meta + l * META_WIDTH;
        layer_t *ly = &job->layers[l];
        if (ly->permute) {
            uint32_t a = (uint32_t)ly->a, b = (uint32_t)ly->b;
            uint32_t k0 = (uint32_t)m[5], k1 = (uint32_t)m[6], k2 = (uint32_t)m[7], k3 = (uint32_t)m[8];
            uint16_t *h = (uint16_t *)w;
            ly->t0 = h; h += b; ly->t1 = h; h += a; ly->t2 = h; h += b; ly->t3 = h; h += a;
            w += a + b + 2;
            for (uint32_t y = 0; y < b; y++) { ly->t0[y] = (uint16_t)(hash32(y, k0) % a); ly->t2[y] = (uint16_t)(hash32(y, k2) % a); }
            for (uint32_t x = 0; x < a; x++) { ly->t1[x] = (uint16_t)(hash32(x, k1) % b); ly->t3[x] = (uint16_t)(hash32(x, k3) % b); }
            if (with_rowbase && ly->b <= N && N < ((int64_t)1 << 31)) {
                ly->rowbase = w; w += ly->a;
                for (int64_t x = 0; x < ly->a; x++) ly->rowbase[x] = (uint32_t)((ly->o + (x * ly->b) % N) % N);
            }
            int64_t rows = chunk_rows_elems / ly->b; if (rows < 1) rows = 1;
            for (int64_t x = 0; x < ly->a; x += rows) {
                job->chunks[c].layer = l; job->chunks[c].lo = x;
                job->chunks[c].hi = x + rows < ly->a ? x + rows : ly->a; c++;
            }
        } else {
            for (int64_t j = 0; j < ly->n; j += chunk_rows_elems) {
                job->chunks[c].layer = l; job->chunks[c].lo = j;
                job->chunks[c].hi = j + chunk_rows_elems < ly->n ? j + chunk_rows_elems : ly->n; c++;
            }
        }
    }
    job->nchunks = c;
    return 0;
}

/* ---- the permutation (x, y) -> (x, y), forward and inverse; p = x * b + y ---- */

static inline void rounds_fwd(const layer_t *ly, uint32_t *px, uint32_t *py) {
    uint32_t a = (uint32_t)ly->a, b = (uint32_t)ly->b, x = *px, y = *py;
    x += ly->t0[y]; x = x >= a ? x - a : x;
    y += ly->t1[x]; y = y >= b ? y - b : y;
    x += ly->t2[y]; x = x >= a ? x - a : x;
    y += ly->t3[x]; y = y >= b ? y - b : y;
    *px = x; *py = y;
}

static inline void rounds_inv(const layer_t *ly, uint32_t *px, uint32_t *py) {
    uint32_t a = (uint32_t)ly->a, b = (uint32_t)ly->b, x = *px, y = *py, t;
    t = ly->t3[x]; y = y >= t ? y - t : y + b - t;
    t = ly->t2[y]; x = x >= t ? x - t : x + a - t;
    t = ly->t1[x]; y = y >= t ? y - t : y + b - t;
    t = ly->t0[y]; x = x >= t ? x - t : x + a - t;
    *px = x; *py = y;
}

/* Cycle walking: p = x * b + y is outside [0, n); re-apply the rounds until it lands inside. */
static inline void walk(const layer_t *ly, uint32_t *px, uint32_t *py, int inverse) {
    uint64_t b = (uint64_t)ly->b, n = (uint64_t)ly->n;
    uint64_t p = (uint64_t)*px * b + *py;
    while (p >= n) {
        uint32_t x = (uint32_t)(p / b), y = (uint32_t)(p % b);
        if (inverse) rounds_inv(ly, &x, &y); else rounds_fwd(ly, &x, &y);
        *px = x; *py = y;
        p = (uint64_t)x * b + y;
    }
}

static inline int64_t ring_index(const layer_t *ly, uint32_t x, uint32_t y) {
    if (ly->rowbase) {
        uint32_t i = ly->rowbase[x] + y;
        return i >= (uint32_t)ly->ring ? i - (uint32_t)ly->ring : i;
    }
    return (ly->o + ((int64_t)x * ly->b + y) % ly->ring) % ly->ring;
}

/* ---- forward: out[j] = s(j) * (ring[(o + pi(j)) mod N] * m) ---- */

#define DEFINE_FORWARD(NAME, T, UINT)                                                          \
static void NAME(job_t *job, const chunk_t *ch) {                                              \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *ring = (const T *)job->ring;                                                      \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    T *out = (T *)job->outs[ch->layer];                                                        \
    const UINT signbit = (UINT)1 << (8 * sizeof(T) - 1);                                       \
    if (!ly->permute) {                                                                        \
        int64_t idx = (ly->o + ch->lo % ly->ring) % ly->ring;                                  \
        for (int64_t j = ch->lo; j < ch->hi; j++) {                                            \
            T v = ring[idx] * m;                                                               \
            if (ly->sign && (hash32((uint32_t)j, ly->ks) >> 31)) v = -v;                       \
            out[j] = v;                                                                        \
            if (++idx == ly->ring) idx = 0;                                                    \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    int64_t idxbuf[TILE];                                                                      \
    const uint32_t b = (uint32_t)ly->b;                                                        \
    const int64_t n = ly->n;                                                                   \
    for (int64_t x0 = ch->lo; x0 < ch->hi; x0++) {                                             \
        int64_t j0 = x0 * (int64_t)b;                                                          \
        uint32_t ylim = (uint32_t)(n - j0 < (int64_t)b ? n - j0 : (int64_t)b);                 \
        for (uint32_t y0 = 0; y0 < ylim; y0 += TILE) {                                         \
            uint32_t cnt = ylim - y0 < TILE ? ylim - y0 : TILE;                                \
            for (uint32_t t = 0; t < cnt; t++) {                                               \
                uint32_t x = (uint32_t)x0, y = y0 + t;                                         \
                rounds_fwd(ly, &x, &y);                                                        \
                if ((int64_t)x * b + y >= n) walk(ly, &x, &y, 0);                              \
                idxbuf[t] = ring_index(ly, x, y);                                              \
            }                                                                                  \
            T *o = out + j0 + y0;                                                              \
            for (uint32_t t = 0; t < cnt; t++) o[t] = ring[idxbuf[t]] * m;                     \
            if (ly->sign) {                                                                    \
                UINT *ob = (UINT *)o;                                                          \
                uint32_t jb = (uint32_t)(j0 + y0);                                             \
                for (uint32_t t = 0; t < cnt; t++)                                             \
                    ob[t] ^= (UINT)(hash32(jb + t, ly->ks) >> 31) * signbit;                   \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_FORWARD(forward_chunk_f32, float, uint32_t)
DEFINE_FORWARD(forward_chunk_f64, double, uint64_t)

/* ---- backward: acc[(o + pi(j)) mod N] += s(j) * (g[j] * m).  The weight gradient is read in order
   and accumulated into a ring-sized buffer private to each thread (cache-resident for small rings);
   the buffers are summed in thread order, so the result is deterministic for a given thread count.
   (The GPU kernel gathers through pi^-1 instead: there, random reads are cheap and scatters are not.) ---- */

#define DEFINE_BACKWARD(NAME, T, UINT)                                                         \
static void NAME(job_t *job, const chunk_t *ch, T *acc) {                                      \
    const layer_t *ly = &job->layers[ch->layer];                                               \
    const T *g = (const T *)job->outs[ch->layer];                                              \
    const T m = ((const T *)job->mult)[ch->layer];                                             \
    const UINT signbit = (UINT)1 << (8 * sizeof(T) - 1);                                       \
    if (!g) return;                                                                            \
    if (!ly->permute) {                                                                        \
        int64_t idx = (ly->o + ch->lo % ly->ring) % ly->ring;                                  \
        for (int64_t j = ch->lo; j < ch->hi; j++) {                                            \
            T v = g[j] * m;                                                                    \
            if (ly->sign && (hash32((uint32_t)j, ly->ks) >> 31)) v = -v;                       \
            acc[idx] += v;                                                                     \
            if (++idx == ly->ring) idx = 0;                                                    \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    int64_t idxbuf[TILE];                                                                      \
    T vbuf[TILE];                                                                              \
    const uint32_t b = (uint32_t)ly->b;                                                        \
    const int64_t n = ly->n;                                                                   \
    for (int64_t x0 = ch->lo; x0 < ch->hi; x0++) {                                             \
        int64_t j0 = x0 * (int64_t)b;                                                          \
        uint32_t ylim = (uint32_t)(n - j0 < (int64_t)b ? n - j0 : (int64_t)b);                 \
        for (uint32_t y0 = 0; y0 < ylim; y0 += TILE) {                                         \
            uint32_t cnt = ylim - y0 < TILE ? ylim - y0 : TILE;                                \
            for (uint32_t t = 0; t < cnt; t++) {                                               \
                uint32_t x = (uint32_t)x0, y = y0 + t;                                         \
                rounds_fwd(ly, &x, &y);                                                        \
                if ((int64_t)x * b + y >= n) walk(ly, &x, &y, 0);                              \
                idxbuf[t] = ring_index(ly, x, y);                                              \
            }                                                                                  \
            const T *gi = g + j0 + y0;                                                         \
            for (uint32_t t = 0; t < cnt; t++) vbuf[t] = gi[t] * m;                            \
            if (ly->sign) {                                                                    \
                UINT *vb = (UINT *)vbuf;                                                       \
                uint32_t jb = (uint32_t)(j0 + y0);                                             \
                for (uint32_t t = 0; t < cnt; t++)                                             \
                    vb[t] ^= (UINT)(hash32(jb + t, ly->ks) >> 31) * signbit;                   \
            }                                                                                  \
            for (uint32_t t = 0; t < cnt; t++) acc[idxbuf[t]] += vbuf[t];                      \
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

typedef struct { job_t *job; int64_t c0, c1; void *acc; } part_t;

static void *backward_worker(void *arg) {
    part_t *part = (part_t *)arg;
    job_t *job = part->job;
    for (int64_t c = part->c0; c < part->c1; c++) {
        if (job->dtype == 0) backward_chunk_f32(job, &job->chunks[c], (float *)part->acc);
        else backward_chunk_f64(job, &job->chunks[c], (double *)part->acc);
    }
    return NULL;
}

static void run_threads(void *(*fn)(void *), job_t *job, int nthreads) {
    pthread_t tid[64];
    int started = 0;
    if (nthreads > 64) nthreads = 64;
    for (int t = 1; t < nthreads; t++)
        if (pthread_create(&tid[started], NULL, fn, job) == 0) started++;
    fn(job);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
}

int rpg_abi_version(void) { return 1; }

int rpg_forward(int dtype, const void *ring, int64_t N, int64_t L, const int64_t *meta,
                const void *mult, void **outs, int nthreads) {
    job_t job;
    memset(&job, 0, sizeof(job));
    job.L = L; job.N = N; job.ring = ring; job.mult = mult; job.outs = outs; job.dtype = dtype;
    if (setup(&job, meta, 1, CHUNK_ELEMS)) { free_job(&job); return 1; }
    int64_t work = job.nchunks;
    run_threads(forward_worker, &job, work < nthreads ? (int)(work > 0 ? work : 1) : nthreads);
    free_job(&job);
    return 0;
}

int rpg_backward(int dtype, void *acc, int64_t N, int64_t L, const int64_t *meta,
                 const void *mult, void **grads, int nthreads) {
    job_t job;
    memset(&job, 0, sizeof(job));
    job.L = L; job.N = N; job.mult = mult; job.outs = grads; job.acc = acc; job.dtype = dtype;
    if (setup(&job, meta, 1, CHUNK_ELEMS)) { free_job(&job); return 1; }
    /* static partition of the chunks by element count: deterministic for a given thread count */
    int64_t total = 0;
    for (int64_t l = 0; l < L; l++) if (grads[l]) total += job.layers[l].n;
    if (nthreads > 64) nthreads = 64;
    if (nthreads < 1) nthreads = 1;
    if ((int64_t)nthreads * 4 * CHUNK_ELEMS > total) nthreads = (int)(total / (4 * CHUNK_ELEMS)) + 1;
    size_t esize = dtype == 0 ? sizeof(float) : sizeof(double);
    part_t parts[64];
    void *priv = nthreads > 1 ? calloc((size_t)(nthreads - 1) * (size_t)N, esize) : NULL;
    if (nthreads > 1 && !priv) nthreads = 1;
    int64_t c = 0, seen = 0;
    for (int t = 0; t < nthreads; t++) {
        parts[t].job = &job;
        parts[t].acc = t == 0 ? acc : (char *)priv + (size_t)(t - 1) * (size_t)N * esize;
        parts[t].c0 = c;
        int64_t goal = total * (t + 1) / nthreads;
        while (c < job.nchunks && (t == nthreads - 1 || seen < goal)) {
            const chunk_t *ch = &job.chunks[c];
            const layer_t *ly = &job.layers[ch->layer];
            if (grads[ch->layer]) {
                int64_t lo = ly->permute ? ch->lo * ly->b : ch->lo;
                int64_t hi = ly->permute ? ch->hi * ly->b : ch->hi;
                seen += (hi < ly->n ? hi : ly->n) - lo;
            }
            c++;
        }
        parts[t].c1 = c;
    }
    pthread_t tid[64];
    int started[64] = {0};
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&tid[t], NULL, backward_worker, &parts[t]) == 0;
    backward_worker(&parts[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else backward_worker(&parts[t]);
    }
    for (int t = 1; t < nthreads; t++) {
        if (dtype == 0) {
            float *d = (float *)acc, *s = (float *)parts[t].acc;
            for (int64_t i = 0; i < N; i++) d[i] += s[i];
        } else {
            double *d = (double *)acc, *s = (double *)parts[t].acc;
            for (int64_t i = 0; i < N; i++) d[i] += s[i];
        }
    }
    free(priv);
    free_job(&job);
    return 0;
}
"""
