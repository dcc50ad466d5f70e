/*
 * rpg_hf CPU kernels, part 1: the per-layer tables and the ring index of an element (included by
 * rpg_cpu.c).  Constants, Lemire's fastmod, the keyed hash, the Feistel round tables built per call
 * (O(a + b) per layer; nothing is kept), the cycle-walking slow path and the tile index loop.
 */
#ifndef RPG_CPU_TABLES_H
#define RPG_CPU_TABLES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define META_WIDTH 10
#define CHUNK_ELEMS 16384
#define TILE 512
#define MAX_THREADS 64
#define PREFETCH_BYTES (1 << 20)
#define VB 32                            /* generator version 2: weights per block */
#define BLOCKS_PER_CHUNK (CHUNK_ELEMS / VB)

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
    int permute, sign, tables; /* tables: version 1's round tables built (a permuted version-1 layer) */
    uint32_t ks;
    uint16_t *t0;   /* [b]  round 0, indexed by y,       values < a */
    uint16_t *t1e;  /* [2a] round 1, indexed by x < 2a,  values < b */
    uint16_t *t2e;  /* [2b] round 2, indexed by y < 2b,  values < a */
    uint16_t *modb; /* [3b] v mod b */
    uint64_t *w;    /* [3a] ring offset of row (x mod a), bit 31 set on a partial last row | round 3 << 32 */
    uint32_t r_last, last; /* ring offset of the last row, and how many of its b entries are < n */
    int blocks;     /* generator version 2: (a, b) is the grid of the nb = n / VB full blocks */
    uint32_t nb;
    uint32_t *bt;   /* version 2, permuted: round tables t0[b] < a, t1[a] < b, t2[b] < a, t3[a] < b */
} layer_t;

typedef struct { int64_t layer, lo, hi; } chunk_t; /* blocks [lo, hi) of a version-2 layer, rows [lo, hi)
                                                      of a permuted version-1 layer, else elements */

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
        ly->tables = ly->permute;
        ly->blocks = (int)((m[4] >> 2) & 1);
        if (ly->blocks) {
            ly->tables = 0;
            ly->nb = (uint32_t)(ly->n / VB);
            if (ly->permute) bytes += 4 * 2 * ((int64_t)ly->a + (int64_t)ly->b) + 64;
            if (pad < VB) pad = VB;
            nchunks += ((ly->n + VB - 1) / VB + BLOCKS_PER_CHUNK - 1) / BLOCKS_PER_CHUNK;
        } else if (ly->permute) {
            if (ly->tables) bytes += 8 * 3 * (int64_t)ly->a + 2 * (6 * (int64_t)ly->b + 2 * (int64_t)ly->a) + 64;
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
        if (ly->blocks && ly->permute) {
            uint32_t a = ly->a, b = ly->b;
            w = (char *)(((uintptr_t)w + 7) & ~(uintptr_t)7);
            ly->bt = (uint32_t *)w; w += 4 * 2 * ((size_t)a + b);
            uint32_t *t0 = ly->bt, *t1 = t0 + b, *t2 = t1 + a, *t3 = t2 + b;
            uint64_t ma = fastmod_m(a), mb = fastmod_m(b);
            for (uint32_t y = 0; y < b; y++) {
                t0[y] = fastmod(hash32(y, (uint32_t)m[5]), ma, a);
                t2[y] = fastmod(hash32(y, (uint32_t)m[7]), ma, a);
            }
            for (uint32_t x = 0; x < a; x++) {
                t1[x] = fastmod(hash32(x, (uint32_t)m[6]), mb, b);
                t3[x] = fastmod(hash32(x, (uint32_t)m[8]), mb, b);
            }
        }
        if (ly->tables) {
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
        }
        if (ly->blocks) {
            int64_t nblk = (ly->n + VB - 1) / VB;
            for (int64_t i = 0; i < nblk; i += BLOCKS_PER_CHUNK) {
                job->chunks[c].layer = l; job->chunks[c].lo = i;
                job->chunks[c].hi = i + BLOCKS_PER_CHUNK < nblk ? i + BLOCKS_PER_CHUNK : nblk; c++;
            }
        } else if (ly->permute) {
            int64_t a = ly->a, rows = CHUNK_ELEMS / ly->b; if (rows < 1) rows = 1;
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

/* ---- generator version 2: the position of a whole block ---- */

/* π1 of block (x, y) = (i / b, i % b) on the grid of the nb full blocks: version 1's four rounds
   on reduced coordinates, cycle walking until the result is below nb. */
static inline uint32_t block_pi(const layer_t *ly, uint32_t x, uint32_t y) {
    const uint32_t a = ly->a, b = ly->b;
    const uint32_t *t0 = ly->bt, *t1 = t0 + b, *t2 = t1 + a, *t3 = t2 + b;
    for (;;) {
        x += t0[y]; x = x >= a ? x - a : x;
        y += t1[x]; y = y >= b ? y - b : y;
        x += t2[y]; x = x >= a ? x - a : x;
        y += t3[x]; y = y >= b ? y - b : y;
        uint32_t p = x * b + y;
        if (p < ly->nb) return p;
        x = p / b; y = p % b;
    }
}

/* (o + VB * p) mod N: the ring offset of window block p (below N + VB with the lanes added). */
static inline int64_t block_base(int64_t N, const layer_t *ly, uint32_t p) {
    int64_t base = ly->o + (int64_t)p * VB;
    if (base >= N) base = ly->n <= N ? base - N : base % N; /* o < N and VB * p < n */
    return base;
}

/* Walk the blocks lo, lo + 1, ... of a version-2 layer: block_next gives each one's window block. */
typedef struct { uint32_t x, y; } block_walk_t;

static inline block_walk_t block_walk(const layer_t *ly, int64_t lo) {
    block_walk_t w = {0, 0};
    if (ly->permute && lo < (int64_t)ly->nb) { w.x = (uint32_t)(lo / ly->b); w.y = (uint32_t)(lo % ly->b); }
    return w;
}

static inline uint32_t block_next(const layer_t *ly, block_walk_t *w, int64_t i) {
    if (!ly->permute || i >= (int64_t)ly->nb) return (uint32_t)i; /* the tail block stays in place */
    uint32_t p = block_pi(ly, w->x, w->y);
    if (++w->y == ly->b) { w->y = 0; w->x++; }
    return p;
}

#endif /* RPG_CPU_TABLES_H */
