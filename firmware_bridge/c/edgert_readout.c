/* edgert_readout.c: see edgert_readout.h. C99, no malloc, no OS calls. */
#include "edgert_readout.h"

#include <math.h>

uint32_t edgert_crc32(uint32_t crc, const void *data, size_t n)
{
    /* Bitwise, reflected polynomial 0xEDB88320: slow but table-free (no 1 KB of flash). */
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (n--) {
        int k;
        crc ^= *p++;
        for (k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

float edgert_half_to_float(uint16_t h)
{
    int exponent = (h >> 10) & 0x1F;
    int mantissa = h & 0x3FF;
    float value;
    if (exponent == 0)
        value = ldexpf((float)mantissa, -24);                         /* zero or subnormal */
    else if (exponent == 31)
        value = mantissa ? NAN : INFINITY;
    else
        value = ldexpf((float)(mantissa | 0x400), exponent - 25);      /* 1.m x 2^(e-15) */
    return (h & 0x8000) ? -value : value;
}

static float matrix_dot(const edgert_matrix *m, uint32_t row, uint32_t n_cols, const float *x)
{
    /* One accumulator in float, summed in index order: the Python reference does the same for
     * the exact-agreement test of float32 exports. */
    float acc = 0.0f;
    uint32_t j;
    size_t base = (size_t)row * n_cols;
    if (m->dtype == EDGERT_INT8) {
        const int8_t *q = (const int8_t *)m->data + base;
        for (j = 0; j < n_cols; j++)
            acc += (float)q[j] * x[j];
        return acc * m->row_scale[row];
    }
    if (m->dtype == EDGERT_FLOAT16) {
        const uint16_t *h = (const uint16_t *)m->data + base;
        for (j = 0; j < n_cols; j++)
            acc += edgert_half_to_float(h[j]) * x[j];
        return acc;
    }
    {
        const float *w = (const float *)m->data + base;
        for (j = 0; j < n_cols; j++)
            acc += w[j] * x[j];
        return acc;
    }
}

static int check_blocks(uint32_t crc32, const void *const *blocks, const uint32_t *sizes, uint32_t n_blocks)
{
    uint32_t crc = 0, b;
    for (b = 0; b < n_blocks; b++)
        crc = edgert_crc32(crc, blocks[b], sizes[b]);
    return crc == crc32 ? EDGERT_OK : EDGERT_BAD_CRC;
}

int edgert_prototypes_check(const edgert_prototypes *m)
{
    if (m->format != EDGERT_FORMAT_VERSION)
        return EDGERT_BAD_FORMAT;
    return check_blocks(m->crc32, m->blocks, m->block_sizes, m->n_blocks);
}

/* 1 / ||x||, or 0 when x is all zero or holds NaN/inf. */
static float inverse_norm(const float *x, uint32_t n)
{
    float sq = 0.0f;
    uint32_t j;
    for (j = 0; j < n; j++)
        sq += x[j] * x[j];
    if (!(sq > 0.0f) || sq == INFINITY)
        return 0.0f;
    return 1.0f / sqrtf(sq);
}

static void softmax_in_place(float *v, uint32_t n)
{
    float peak = v[0], total = 0.0f;
    uint32_t k;
    for (k = 1; k < n; k++)
        if (v[k] > peak)
            peak = v[k];
    for (k = 0; k < n; k++) {
        v[k] = expf(v[k] - peak);
        total += v[k];
    }
    for (k = 0; k < n; k++)
        v[k] /= total;
}

int edgert_prototypes_classify(const edgert_prototypes *m, const float *features, float *probs)
{
    float inv = inverse_norm(features, m->dim);
    float best_score = -INFINITY;
    int best = 0;
    uint32_t k;
    if (inv == 0.0f)
        return EDGERT_BAD_INPUT;
    for (k = 0; k < m->n_classes; k++) {
        /* cos = (p . f) / ||f||: scale the dot product, not the input, so the input is read-only. */
        float score = matrix_dot(&m->prototypes, k, m->dim, features) * inv;
        if (probs)
            probs[k] = score * m->inv_temperature;
        if (score > best_score) {
            best_score = score;
            best = (int)k;
        }
    }
    if (probs)
        softmax_in_place(probs, m->n_classes);
    return best;
}

/* ---- MemFlow ---------------------------------------------------------------------------------- */

#define GOLDEN 0x9E3779B97F4A7C15ull

uint64_t edgert_splitmix64(uint64_t *state)
{
    uint64_t z;
    *state += GOLDEN;
    z = *state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float edgert_uniform_pm1(uint64_t z)
{
    return (float)(uint32_t)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

/* The n-th draw (0-based) without running the n before it: splitmix64's state after n calls is
 * seed + n * GOLDEN, so any weight can be regenerated on demand. */
static float weight_at(uint64_t seed, uint64_t n)
{
    uint64_t state = seed + n * GOLDEN;
    return edgert_uniform_pm1(edgert_splitmix64(&state));
}

static float fan_in_gain(uint32_t fan_in)
{
    return 1.0f / sqrtf((float)fan_in);
}

/* Bridge b's K in-links (global source node, weight with gain) into w->slot_src / w->slot_w,
 * replaying its draws from the state recorded at init; returns the state after them. */
static uint64_t bridge_links(const edgert_memflow *m, edgert_memflow_work *w, uint64_t state, uint32_t b)
{
    uint64_t n_nodes = (uint64_t)m->dim + m->n_hub + m->n_bridge;
    int32_t own = (int32_t)(m->dim + m->n_hub + b);
    float gain = m->in_degree ? fan_in_gain(m->in_degree) : 0.0f;
    uint32_t s, t;
    for (s = 0; s < m->in_degree; s++) {
        int32_t src;
        for (;;) {
            int ok;
            src = (int32_t)(edgert_splitmix64(&state) % n_nodes);
            ok = src != own;
            for (t = 0; t < s; t++)
                if (w->slot_src[t] == src)
                    ok = 0;
            if (ok)
                break;
        }
        w->slot_src[s] = src;
        w->slot_w[s] = edgert_uniform_pm1(edgert_splitmix64(&state)) * gain;
    }
    return state;
}

int edgert_memflow_init(const edgert_memflow *m, edgert_memflow_work *w)
{
    uint64_t state;
    uint32_t b;
    if (m->format != EDGERT_FORMAT_VERSION)
        return EDGERT_BAD_FORMAT;
    if (check_blocks(m->crc32, m->blocks, m->block_sizes, m->n_blocks) != EDGERT_OK)
        return EDGERT_BAD_CRC;
    /* Dense draws first (entry->hub, then hub->hub without the diagonal), then the bridges. */
    state = m->seed + ((uint64_t)m->n_hub * m->dim + (uint64_t)m->n_hub * (m->n_hub ? m->n_hub - 1 : 0)) * GOLDEN;
    for (b = 0; b < m->n_bridge; b++) {
        w->bridge_state[b] = state;
        state = bridge_links(m, w, state, b);
    }
    w->ready = 1;
    return EDGERT_OK;
}

static float entry_hub_weight(const edgert_memflow *m, uint32_t i, uint32_t j)
{
    return weight_at(m->seed, (uint64_t)i * m->dim + j) * fan_in_gain(m->dim);
}

static float hub_hub_weight(const edgert_memflow *m, uint32_t i, uint32_t j)
{
    uint64_t n;
    if (i == j)
        return 0.0f;
    n = (uint64_t)m->n_hub * m->dim + (uint64_t)i * (m->n_hub - 1) + (j < i ? j : j - 1);
    return weight_at(m->seed, n) * (m->n_hub > 1 ? fan_in_gain(m->n_hub - 1) : 0.0f);
}

int edgert_memflow_graph(const edgert_memflow *m, edgert_memflow_work *w, float *w_entry_hub, float *w_hub_hub,
                         int32_t *bridge_src, float *bridge_w)
{
    uint32_t i, j, b, s;
    if (!w->ready)
        return EDGERT_BAD_FORMAT;
    for (i = 0; i < m->n_hub; i++)
        for (j = 0; j < m->dim; j++)
            w_entry_hub[(size_t)i * m->dim + j] = entry_hub_weight(m, i, j);
    for (i = 0; i < m->n_hub; i++)
        for (j = 0; j < m->n_hub; j++)
            w_hub_hub[(size_t)i * m->n_hub + j] = hub_hub_weight(m, i, j);
    for (b = 0; b < m->n_bridge; b++) {
        bridge_links(m, w, w->bridge_state[b], b);
        for (s = 0; s < m->in_degree; s++) {
            bridge_src[(size_t)b * m->in_degree + s] = w->slot_src[s];
            bridge_w[(size_t)b * m->in_degree + s] = w->slot_w[s];
        }
    }
    return EDGERT_OK;
}

static float matrix_at(const edgert_matrix *mat, uint32_t row, uint32_t col, uint32_t n_cols)
{
    size_t at = (size_t)row * n_cols + col;
    if (mat->dtype == EDGERT_INT8)
        return (float)((const int8_t *)mat->data)[at] * mat->row_scale[row];
    if (mat->dtype == EDGERT_FLOAT16)
        return edgert_half_to_float(((const uint16_t *)mat->data)[at]);
    return ((const float *)mat->data)[at];
}

/* Traces m (N) of the centred input z: entry current a, then T rounds of graded spikes with reset. */
static void propagate(const edgert_memflow *m, edgert_memflow_work *w)
{
    uint32_t n_hub = m->n_hub, n = m->n_hub + m->n_bridge, d = m->dim;
    uint32_t i, j, b, s, t;
    float gain_entry = fan_in_gain(d);
    uint64_t state = m->seed;
    for (i = 0; i < n_hub; i++) {
        /* Entry->hub weights in draw order: one sequential pass of the PRNG, nothing stored. */
        float acc = 0.0f;
        for (j = 0; j < d; j++)
            acc += edgert_uniform_pm1(edgert_splitmix64(&state)) * gain_entry * w->z[j];
        w->a[i] = acc;
    }
    for (b = 0; b < m->n_bridge; b++) {
        float acc = 0.0f;
        bridge_links(m, w, w->bridge_state[b], b);
        for (s = 0; s < m->in_degree; s++)
            if ((uint32_t)w->slot_src[s] < d)
                acc += w->slot_w[s] * w->z[w->slot_src[s]];
        w->a[n_hub + b] = acc;
    }
    if (!m->spiking) {
        for (i = 0; i < n; i++)
            w->m[i] = w->a[i];
        return;
    }
    for (i = 0; i < n; i++)
        w->h[i] = w->o_prev[i] = w->m[i] = 0.0f;
    for (t = 0; t < m->rounds; t++) {
        for (i = 0; i < n_hub; i++) {
            float acc = w->a[i];
            if (t > 0)
                for (j = 0; j < n_hub; j++)
                    acc += hub_hub_weight(m, i, j) * w->o_prev[j];
            w->h[i] += acc;
        }
        for (b = 0; b < m->n_bridge; b++) {
            float acc = w->a[n_hub + b];
            if (t > 0) {
                bridge_links(m, w, w->bridge_state[b], b);
                for (s = 0; s < m->in_degree; s++)
                    if ((uint32_t)w->slot_src[s] >= d)
                        acc += w->slot_w[s] * w->o_prev[w->slot_src[s] - (int32_t)d];
            }
            w->h[n_hub + b] += acc;
        }
        for (i = 0; i < n; i++) {
            if (w->h[i] > 0.0f) {
                w->o[i] = w->h[i];
                w->h[i] = 0.0f;
            } else {
                w->o[i] = 0.0f;
            }
            w->m[i] += w->o[i];
        }
        for (i = 0; i < n; i++)
            w->o_prev[i] = w->o[i];
    }
}

/* Class probabilities from the traces: Gaussian log-likelihoods per (class, neuron), neuron
 * confidences, then the product or mixture read-out (edge_runtime/kernels/memflow.py: retrieve). */
static void retrieve(const edgert_memflow *m, edgert_memflow_work *w, float *out)
{
    uint32_t n = m->n_hub + m->n_bridge, K = m->n_classes, i, k;
    float top = -INFINITY, c_sum = 0.0f;
    for (i = 0; i < n; i++)
        w->best[i] = -INFINITY;
    for (k = 0; k < K; k++) {
        if (!m->present[k])
            continue;
        for (i = 0; i < n; i++) {
            uint32_t vc = m->var_cols == 1 ? 0 : k;
            float diff = w->m[i] - matrix_at(&m->mu, i, k, K);
            float v = matrix_at(&m->lnorm, i, vc, m->var_cols) - diff * diff * matrix_at(&m->hiv, i, vc, m->var_cols);
            w->ll[(size_t)k * n + i] = v;
            if (v > w->best[i])
                w->best[i] = v;
        }
    }
    for (i = 0; i < n; i++)
        if (m->alive[i] && w->best[i] > top)
            top = w->best[i];
    for (i = 0; i < n; i++) {
        float alive = m->alive[i] ? 1.0f : 0.0f;
        w->c[i] = m->confidence ? alive * (float)exp((double)w->best[i] - (double)top) : alive;
        c_sum += w->c[i];
    }
    if (m->product) {
        double hi = -INFINITY, total = 0.0;
        for (k = 0; k < K; k++) {
            float acc = 0.0f;
            if (!m->present[k]) {
                out[k] = -INFINITY;
                continue;
            }
            for (i = 0; i < n; i++)
                acc += w->c[i] * w->ll[(size_t)k * n + i];
            out[k] = (float)((double)acc / ((double)c_sum * m->tau));
            if (out[k] > hi)
                hi = out[k];
        }
        for (k = 0; k < K; k++) {
            out[k] = m->present[k] ? (float)exp((double)out[k] - hi) : 0.0f;
            total += out[k];
        }
        for (k = 0; k < K; k++)
            out[k] = (float)((double)out[k] / total);
        return;
    }
    /* Mixture: per-neuron posteriors exp(ll - best) / Z_i, averaged with weights c_i / sum c. */
    for (k = 0; k < K; k++)
        if (m->present[k])
            for (i = 0; i < n; i++)
                w->ll[(size_t)k * n + i] = (float)exp((double)w->ll[(size_t)k * n + i] - (double)w->best[i]);
    for (i = 0; i < n; i++)
        w->best[i] = 0.0f;
    for (k = 0; k < K; k++)
        if (m->present[k])
            for (i = 0; i < n; i++)
                w->best[i] += w->ll[(size_t)k * n + i];
    for (i = 0; i < n; i++)
        w->c[i] = w->c[i] / (w->best[i] * c_sum);
    for (k = 0; k < K; k++) {
        float acc = 0.0f;
        if (!m->present[k]) {
            out[k] = 0.0f;
            continue;
        }
        for (i = 0; i < n; i++)
            acc += w->c[i] * w->ll[(size_t)k * n + i];
        out[k] = acc;
    }
    if (m->tau != 1.0) {
        /* Sharpen the flat vote with the calibrated temperature: Pr ~ vote^(1 / tau). */
        double hi = 0.0, total = 0.0;
        for (k = 0; k < K; k++)
            if (out[k] > hi)
                hi = out[k];
        for (k = 0; k < K; k++) {
            out[k] = out[k] > 0.0f ? (float)exp(log((double)out[k] / hi) / m->tau) : 0.0f;
            total += out[k];
        }
        for (k = 0; k < K; k++)
            out[k] = (float)((double)out[k] / total);
    }
}

/* Product with the source linear head's posterior on the back-to-source feature. */
/* z <- z + U^T mix U z (edge_runtime/kernels/align.py: apply), in the Python kernel's order. */
static void align_subspace(const edgert_memflow *m, edgert_memflow_work *w)
{
    uint32_t r = m->rank, d = m->dim, q, s, j;
    for (q = 0; q < r; q++)
        w->y[q] = matrix_dot(&m->basis, q, d, w->z);
    for (q = 0; q < r; q++) {
        float acc = 0.0f;
        for (s = 0; s < r; s++)
            acc += m->mix[q * r + s] * w->y[s];
        w->t[q] = acc;
    }
    for (q = 0; q < r; q++)
        for (j = 0; j < d; j++)
            w->z[j] += matrix_at(&m->basis, q, j, d) * w->t[q];
}

static void combine_prior(const edgert_memflow *m, edgert_memflow_work *w, float *out)
{
    uint32_t K = m->n_classes, d = m->dim, k, j;
    double hi = -INFINITY, total = 0.0, sq = 0.0;
    for (j = 0; j < d; j++) {  /* f = z / scale + centre_source, into the z buffer (done with it) */
        w->z[j] = (m->scale ? w->z[j] / m->scale[j] : w->z[j]) + m->centre_source[j];
        sq += w->z[j] * w->z[j];  /* squares in float, summed in double, like the Python kernel */
    }
    if (m->prior_unit && sq > 0.0) {
        double inv = 1.0 / sqrt(sq);
        for (j = 0; j < d; j++)
            w->z[j] = (float)((double)w->z[j] * inv);
    }
    for (k = 0; k < K; k++) {
        float acc = m->prior_b[k] + matrix_dot(&m->prior_w, k, d, w->z);
        w->logits[k] = acc;
        if (acc > hi)
            hi = acc;
    }
    for (k = 0; k < K; k++) {
        double v = out[k] > 0.0f ? exp(m->head_scale * ((double)w->logits[k] - hi)
                                       + m->memory_weight * log((double)out[k])) : 0.0;
        out[k] = (float)v;
        total += v;
    }
    for (k = 0; k < K; k++)
        out[k] = (float)((double)out[k] / total);
}

int edgert_memflow_classify(const edgert_memflow *m, edgert_memflow_work *w, const float *features, float *probs)
{
    double sq = 0.0, inv;
    uint32_t j, k;
    int best = 0;
    float *out = probs ? probs : w->out;
    if (!w->ready)
        return EDGERT_BAD_FORMAT;
    /* Normalise in double like the Python kernel, then centre. */
    for (j = 0; j < m->dim; j++) {
        double v = (double)features[j];
        if (v != v || v == INFINITY || v == -INFINITY)
            return EDGERT_BAD_INPUT;
        sq += v * v;
    }
    if (sq == 0.0)
        return EDGERT_BAD_INPUT;
    inv = 1.0 / sqrt(sq);
    for (j = 0; j < m->dim; j++)
        w->z[j] = (float)((double)features[j] * inv) - m->centre[j];
    align_subspace(m, w);
    if (m->scale)
        for (j = 0; j < m->dim; j++)
            w->z[j] *= m->scale[j];
    propagate(m, w);
    if (m->trace_delta)
        for (j = 0; j < m->n_hub + m->n_bridge; j++)
            w->m[j] += m->trace_delta[j];
    retrieve(m, w, out);
    if (m->prior)
        combine_prior(m, w, out);
    for (k = 1; k < m->n_classes; k++)
        if (out[k] > out[best])
            best = (int)k;
    return best;
}

/* ---- DMN -------------------------------------------------------------------------------------- */

int edgert_dmn_check(const edgert_dmn *m)
{
    if (m->format != EDGERT_FORMAT_VERSION)
        return EDGERT_BAD_FORMAT;
    return check_blocks(m->crc32, m->blocks, m->block_sizes, m->n_blocks);
}

/* out = x / ||x|| (x and out may be the same array); 0 when x is all zero or holds NaN/inf. The
 * norm is summed in double and the rows divided in float, as numpy's float32 normalisation rounds. */
static int normalise_into(const float *x, float *out, uint32_t n)
{
    double sq = 0.0;
    float norm;
    uint32_t j;
    for (j = 0; j < n; j++)
        sq += (double)x[j] * (double)x[j];
    if (!(sq > 0.0) || sq == INFINITY)
        return 0;
    norm = (float)sqrt(sq);
    for (j = 0; j < n; j++)
        out[j] = x[j] / norm;
    return 1;
}

/* out += weight * softmax(memory logits of w->x) (edge_runtime/kernels/dmn.py: ring_logits). The
 * Python kernel gets |sum_l a_l M_cl| from a Gram matrix it keeps current on writes; a read-only
 * memory forms the weighted prototype instead (no Gram matrix in flash; same value). */
static void dmn_read(const edgert_dmn *m, const edgert_dmn_memory *mem, edgert_dmn_work *w, float *out)
{
    uint32_t d = m->dim, c, l, j;
    if (mem->weight == 0.0f)
        return;
    for (c = 0; c < m->n_classes; c++) {
        uint32_t first = mem->start[c], n = mem->start[c + 1] - first;
        float num = 0.0f, norm2 = 0.0f;
        if (n == 0) {
            w->logits[c] = m->scale * matrix_dot(&m->anchors, c, d, w->x);
            continue;
        }
        for (j = 0; j < d; j++)
            w->proto[j] = 0.0f;
        for (l = first; l < first + n; l++) {
            float s = matrix_dot(&mem->slots, l, d, w->x);
            float a = expf(-m->beta * (1.0f - s));
            num += a * s;
            for (j = 0; j < d; j++)
                w->proto[j] += a * matrix_at(&mem->slots, l, j, d);
        }
        for (j = 0; j < d; j++)
            norm2 += w->proto[j] * w->proto[j];
        w->logits[c] = m->scale * num / sqrtf(norm2 > 1e-30f ? norm2 : 1e-30f);
    }
    softmax_in_place(w->logits, m->n_classes);
    for (c = 0; c < m->n_classes; c++)
        out[c] += mem->weight * w->logits[c];
}

int edgert_dmn_classify(const edgert_dmn *m, edgert_dmn_work *w, const float *features, float *probs)
{
    uint32_t d = m->dim, K = m->n_classes, j, k;
    float total = 0.0f;
    int best = 0;
    float *out = probs ? probs : w->out;
    if (!normalise_into(features, w->x, d))
        return EDGERT_BAD_INPUT;
    if (m->shift) {
        for (j = 0; j < d; j++)
            w->x[j] += m->shift[j];
        if (!normalise_into(w->x, w->x, d))
            return EDGERT_BAD_INPUT;
    }
    for (k = 0; k < K; k++)
        out[k] = m->prior_scale * matrix_dot(&m->prior, k, d, w->x) + (m->prior_bias ? m->prior_bias[k] : 0.0f);
    softmax_in_place(out, K);
    dmn_read(m, &m->dynamic_mem, w, out);
    dmn_read(m, &m->static_mem, w, out);
    for (k = 0; k < K; k++)
        total += out[k];
    for (k = 0; k < K; k++) {
        out[k] /= total;
        if (out[k] > out[best])
            best = (int)k;
    }
    return best;
}
