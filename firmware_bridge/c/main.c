/*
 * Example: classify feature vectors read from stdin with an exported memory.
 *
 *   cc -std=c99 -O2 -I. main.c edgert_readout.c -lm -o classify
 *   ./classify < features.txt      # EDGERT_DIM floats per vector, whitespace separated
 *   ./classify -b < features.f32   # raw little-endian float32, EDGERT_DIM per vector
 *
 * Prints one line per vector: class index, class name, probability. Only this example uses
 * stdio; the read-out itself (edgert_readout.c) has no OS calls and no malloc.
 */
#include <stdio.h>
#include <string.h>

#include "edgert_readout.h"
#include "edgert_memory.h"

static float features[EDGERT_DIM];
static float probs[EDGERT_N_CLASSES];

static int read_vector(int binary)
{
    int j;
    if (binary)
        return fread(features, sizeof(float), EDGERT_DIM, stdin) == EDGERT_DIM;
    for (j = 0; j < EDGERT_DIM; j++)
        if (scanf("%f", &features[j]) != 1)
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    int binary = argc > 1 && strcmp(argv[1], "-b") == 0;
    int status = EDGERT_MEMORY_CHECK();
    if (status != EDGERT_OK) {
        fprintf(stderr, "edgert_memory.h fails its check (status %d): re-export it\n", status);
        return 1;
    }
    while (read_vector(binary)) {
        int k = EDGERT_CLASSIFY(features, probs);
        if (k < 0)
            printf("-1 invalid-input 0\n");
        else
            printf("%d %s %.6f\n", k, edgert_class_names[k], probs[k]);
    }
    return 0;
}
