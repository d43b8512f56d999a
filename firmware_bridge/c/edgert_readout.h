/*
 * edgert_readout.h: classify feature vectors with a memory exported by `edgert bridge export-c`.
 *
 * Portable C99: no malloc, no OS calls, float math only (sqrtf, expf). The memory itself is
 * a set of const arrays in the generated header (edgert_memory.h); include that header in
 * exactly one .c file and pass its EDGERT_MEMORY descriptor to the functions below.
 *
 * Input features are the backbone's pooled vector (any scale: the read-out L2-normalises it,
 * like the Python adapters do).
 */
#ifndef EDGERT_READOUT_H
#define EDGERT_READOUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The generated header's format; a read-out accepts exactly this value. It changes with any
 * descriptor's fields, which the header initialises by position (2: edgert_memflow.prior_unit;
 * 3: edgert_memflow's subspace map and head scale). */
#define EDGERT_FORMAT_VERSION 3

/* Arrays are aligned like TFLite Micro's model arrays, so they can sit in flash and be read
 * with wide loads or DMA. */
#if defined(__GNUC__) || defined(__clang__)
#define EDGERT_ALIGNED(n) __attribute__((aligned(n)))
#elif defined(_MSC_VER)
#define EDGERT_ALIGNED(n) __declspec(align(n))
#else
#define EDGERT_ALIGNED(n)
#endif

enum edgert_dtype { EDGERT_INT8 = 0, EDGERT_FLOAT16 = 1, EDGERT_FLOAT32 = 2 };

enum edgert_status {
    EDGERT_OK = 0,
    EDGERT_BAD_FORMAT = -1,  /* header from another format version */
    EDGERT_BAD_CRC = -2,     /* arrays do not match the CRC-32 stored beside them */
    EDGERT_BAD_INPUT = -3,   /* features all zero, NaN or inf */
    EDGERT_BAD_SIZE = -4     /* sizes beyond the EDGERT_MAX_* limits compiled into this read-out */
};

/* A matrix of n_rows x n_cols values stored as int8 (value = scale[row] * q), float16 bits or float32. */
typedef struct {
    int dtype;                 /* enum edgert_dtype */
    const void *data;          /* int8_t, uint16_t (IEEE half bits) or float, row-major */
    const float *row_scale;    /* int8 only: one scale per row; NULL otherwise */
} edgert_matrix;

/* Nearest class mean / prototype memory: score_k = cos(f, prototype_k), p = softmax(score / T). */
typedef struct {
    uint32_t format;           /* EDGERT_FORMAT_VERSION */
    uint32_t n_classes;
    uint32_t dim;
    float inv_temperature;     /* 1 / T of the softmax over cosine scores */
    edgert_matrix prototypes;  /* n_classes x dim, rows L2-normalised (zero row: class never seen) */
    uint32_t crc32;            /* CRC-32/ISO-HDLC over the arrays' bytes, in declaration order */
    const void *const *blocks; /* the arrays covered by crc32, and their sizes in bytes */
    const uint32_t *block_sizes;
    uint32_t n_blocks;
} edgert_prototypes;

/* MemFlow (edge_runtime.adapters.memflow), read-only: the random network is regenerated from the
 * seed with splitmix64 exactly as edge_runtime/kernels/prng.py specifies; weights are computed on
 * the fly (no weight storage), bridge links from a per-bridge PRNG state found at init. */
typedef struct {
    uint32_t format;
    uint32_t n_classes, dim;
    uint32_t n_hub, n_bridge, in_degree, rounds;
    uint64_t seed;
    int spiking;               /* graded spikes with reset; 0: plain random projection */
    int product;               /* read-out: 1 product of experts, 0 mixture of per-neuron posteriors */
    int confidence;            /* confidence-weighted neurons */
    double tau;                /* read-out temperature (product: logit scale; mixture: vote^(1/tau)) */
    const float *centre;       /* dim: subtracted from the normalised input (source mean + target shift) */
    uint32_t rank;             /* of the subspace map c <- c + U^T mix U c after centring; 0: none */
    edgert_matrix basis;       /* rank x dim: U, the source's principal directions */
    const float *mix;          /* rank x rank: A - I, the covariance alignment frozen at export */
    const float *scale;        /* dim: per-dimension factor after centring (standardisation, spread); NULL: none */
    const float *trace_delta;  /* n_neurons: neuron-level shift added to the traces; NULL: none */
    edgert_matrix mu;          /* n_neurons x n_classes (neuron-major: int8 scales are per neuron) */
    edgert_matrix hiv;         /* n_neurons x var_cols: 1 / (2 V) */
    edgert_matrix lnorm;       /* n_neurons x var_cols: -log(2 pi V / tv) / 2 */
    uint32_t var_cols;         /* 1: pooled variance (shared by classes), n_classes: per class */
    const uint8_t *present;    /* n_classes: the class has memory */
    const uint8_t *alive;      /* n_neurons: the neuron varied on the source */
    int prior;                 /* fuse with the source linear head: p ~ exp(head_scale (W f + b)) p_mem^memory_weight */
    edgert_matrix prior_w;     /* n_classes x dim */
    const float *prior_b;      /* n_classes */
    const float *centre_source;/* dim: f = z / scale + centre_source, the back-to-source feature */
    double head_scale;
    double memory_weight;
    int prior_unit;            /* the head reads f / ||f|| (it was fitted on unit-norm features) */
    uint32_t crc32;
    const void *const *blocks;
    const uint32_t *block_sizes;
    uint32_t n_blocks;
} edgert_memflow;

/* Caller-owned work buffers (the generated header declares static ones of the right sizes). */
typedef struct {
    float *z;                  /* dim */
    float *y, *t;              /* rank each */
    float *a, *h, *o, *o_prev, *m, *c, *best;  /* n_neurons each */
    float *ll;                 /* n_classes x n_neurons */
    uint64_t *bridge_state;    /* n_bridge: PRNG state before each bridge's first draw */
    int32_t *slot_src;         /* in_degree */
    float *slot_w;             /* in_degree */
    float *out;                /* n_classes: probabilities when the caller passes none */
    float *logits;             /* n_classes: the source head's logits */
    int ready;                 /* set by edgert_memflow_init */
} edgert_memflow_work;

/* One DMN memory (edge_runtime.adapters.dmn), read whole: the occupied slots of every class. */
typedef struct {
    edgert_matrix slots;       /* start[n_classes] x dim, class by class, rows L2-normalised */
    const uint32_t *start;     /* n_classes + 1: class c's slots are rows start[c] .. start[c + 1] - 1 */
    float weight;              /* fusion weight; 0: the memory is not read (slots and start NULL) */
} edgert_dmn_memory;

/* DMN (dual memory over a prior), read-only: x = normalise(normalise(f) + shift);
 * p = normalise(softmax(prior_scale * P x + b) + w_dyn softmax(mem_dyn(x)) + w_static softmax(mem_static(x))),
 * mem_c(x) = scale * normalise(sum_l a_l M_cl) . x with a_l = exp(-beta (1 - M_cl . x)); a class with no
 * slot reads scale * anchor_c . x. Nothing is written (adapt on the Linux side, then export again). */
typedef struct {
    uint32_t format;
    uint32_t n_classes, dim;
    const float *shift;        /* dim: source mean - target mean (FOA feature shift); NULL: no shift stage */
    edgert_matrix prior;       /* n_classes x dim: linear head weights, source class means or text embeddings */
    const float *prior_bias;   /* n_classes; NULL: none */
    float prior_scale;         /* logit scale of the prior (1 for the linear head) */
    edgert_dmn_memory dynamic_mem;  /* the ring of pseudo-labelled test features */
    edgert_dmn_memory static_mem;   /* labelled features */
    edgert_matrix anchors;     /* n_classes x dim; data NULL when every read memory has a slot in every class */
    float beta, scale;         /* slot weights exp(-beta (1 - cos)), memory logit scale */
    uint32_t crc32;
    const void *const *blocks;
    const uint32_t *block_sizes;
    uint32_t n_blocks;
} edgert_dmn;

/* Caller-owned work buffers (the generated header declares static ones of the right sizes). */
typedef struct {
    float *x;                  /* dim: the shifted, normalised feature */
    float *proto;              /* dim: a class's weighted prototype sum_l a_l M_cl */
    float *logits;             /* n_classes: one memory's logits */
    float *out;                /* n_classes: probabilities when the caller passes none */
} edgert_dmn_work;

/* splitmix64: advances *state and returns the next output (edge_runtime/kernels/prng.py). */
uint64_t edgert_splitmix64(uint64_t *state);

/* The top 24 bits of z as a float32 in [-1, 1), exactly. */
float edgert_uniform_pm1(uint64_t z);

/* Checks format and CRC, and prepares the work buffers (the bridge PRNG states). */
int edgert_memflow_init(const edgert_memflow *m, edgert_memflow_work *w);

/* The whole graph, as Python's make_graph returns it (for verification on a host; needs
 * (H x d) + (H x H) + 2 (B x K) values of output space). */
int edgert_memflow_graph(const edgert_memflow *m, edgert_memflow_work *w, float *w_entry_hub, float *w_hub_hub,
                         int32_t *bridge_src, float *bridge_w);

/* Classifies one feature vector; probs (n_classes) may be NULL. Returns the class or a negative status. */
int edgert_memflow_classify(const edgert_memflow *m, edgert_memflow_work *w, const float *features, float *probs);

/* CRC-32/ISO-HDLC (zlib's); continue a running CRC by passing the previous result as crc. */
uint32_t edgert_crc32(uint32_t crc, const void *data, size_t n);

/* IEEE 754 half -> float, exact (subnormals, inf, NaN included). */
float edgert_half_to_float(uint16_t h);

/* Checks format version and CRC of a prototype memory. Returns EDGERT_OK or an edgert_status. */
int edgert_prototypes_check(const edgert_prototypes *m);

/* Classifies one feature vector (dim floats). Writes n_classes probabilities to probs when it is
 * not NULL. Returns the predicted class (>= 0) or a negative edgert_status. */
int edgert_prototypes_classify(const edgert_prototypes *m, const float *features, float *probs);

/* Checks format version and CRC of a DMN memory. Returns EDGERT_OK or an edgert_status. */
int edgert_dmn_check(const edgert_dmn *m);

/* Classifies one feature vector; probs (n_classes) may be NULL. Returns the class or a negative status. */
int edgert_dmn_classify(const edgert_dmn *m, edgert_dmn_work *w, const float *features, float *probs);

#ifdef __cplusplus
}
#endif

#endif /* EDGERT_READOUT_H */
