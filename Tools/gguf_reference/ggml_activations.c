// Runs llama.cpp's own CPU conversions on float rows read from a file, for QuantKit's fixtures
// (driven by make_activation_fixtures.py, which documents how to build and rerun it).
//
//   ggml_activations act   TYPE N IN OUT [SUMS]  from_float of the CPU backend (what a matmul does to its
//                                                 activations), then the stored values as floats; q8_1 also
//                                                 writes each block's s field to SUMS
//   ggml_activations quant TYPE ROWS N IN OUT     ggml_quantize_chunk with no imatrix (llama-quantize's path)
//   ggml_activations deq   TYPE N IN OUT          ggml's to_float of raw block bytes
//   ggml_activations table - - - OUT              vec_dot_type (u32) of every type id below GGML_TYPE_COUNT
//
// IN and OUT are raw little-endian files (float32 values or block bytes). TYPE is ggml's type id.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-cpu.h"

static void * read_file(const char * path, size_t * size) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void * buf = malloc(n > 0 ? (size_t)n : 1);
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static void write_file(const char * path, const void * data, size_t size) {
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) { perror(path); exit(2); }
    fclose(f);
}

// q8_1 and q8_K have no to_float in ggml's type table; their fields are read here by layout
// (ggml-common.h: q8_1 = fp16 d, fp16 s, int8 qs[32]; q8_K = float d, int8 qs[256], int16 bsums[16]).
static void stored_values(enum ggml_type t, const uint8_t * blocks, int64_t n, float * out, float * sums) {
    if (t == GGML_TYPE_Q8_1) {
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t * blk = blocks + b * 36;
            ggml_fp16_t d, s;
            memcpy(&d, blk, 2);
            memcpy(&s, blk + 2, 2);
            const float df = ggml_fp16_to_fp32(d);
            for (int j = 0; j < 32; j++) out[b * 32 + j] = df * (float)(int8_t)blk[4 + j];
            if (sums) sums[b] = ggml_fp16_to_fp32(s);
        }
    } else if (t == GGML_TYPE_Q8_K) {
        for (int64_t b = 0; b < n / 256; b++) {
            const uint8_t * blk = blocks + b * 292;
            float d;
            memcpy(&d, blk, 4);
            for (int j = 0; j < 256; j++) out[b * 256 + j] = d * (float)(int8_t)blk[4 + j];
        }
    } else if (t == GGML_TYPE_F32) {
        memcpy(out, blocks, (size_t)n * sizeof(float));
    } else {
        ggml_get_type_traits(t)->to_float(blocks, out, n);
    }
}

int main(int argc, char ** argv) {
    if (argc < 6) { fprintf(stderr, "usage: see the comment at the top of ggml_activations.c\n"); return 2; }
    ggml_cpu_init();
    const char * mode = argv[1];
    const enum ggml_type t = (enum ggml_type)atoi(argv[2]);
    if (strcmp(mode, "table") != 0 && (t < 0 || t >= GGML_TYPE_COUNT)) { fprintf(stderr, "bad type\n"); return 2; }
    size_t in_size;
    if (strcmp(mode, "act") == 0) {
        const int64_t n = atoll(argv[3]);
        float * x = read_file(argv[4], &in_size);
        if (in_size != (size_t)n * sizeof(float)) { fprintf(stderr, "size mismatch\n"); return 2; }
        const size_t qbytes = ggml_row_size(t, n);
        uint8_t * q = malloc(qbytes);
        ggml_get_type_traits_cpu(t)->from_float(x, q, n);
        float * out = malloc((size_t)n * sizeof(float));
        float * sums = malloc((size_t)(n / 32 + 1) * sizeof(float));
        stored_values(t, q, n, out, sums);
        write_file(argv[5], out, (size_t)n * sizeof(float));
        if (t == GGML_TYPE_Q8_1 && argc > 6) write_file(argv[6], sums, (size_t)(n / 32) * sizeof(float));
    } else if (strcmp(mode, "quant") == 0) {
        if (argc < 7) return 2;
        const int64_t rows = atoll(argv[3]), n = atoll(argv[4]);
        float * x = read_file(argv[5], &in_size);
        if (in_size != (size_t)(rows * n) * sizeof(float)) { fprintf(stderr, "size mismatch\n"); return 2; }
        const size_t bytes = (size_t)rows * ggml_row_size(t, n);
        uint8_t * q = malloc(bytes);
        const size_t written = ggml_quantize_chunk(t, x, q, 0, rows, n, NULL);
        if (written != bytes) { fprintf(stderr, "unexpected size\n"); return 2; }
        write_file(argv[6], q, bytes);
    } else if (strcmp(mode, "deq") == 0) {
        const int64_t n = atoll(argv[3]);
        uint8_t * q = read_file(argv[4], &in_size);
        if (in_size != ggml_row_size(t, n)) { fprintf(stderr, "size mismatch\n"); return 2; }
        float * out = malloc((size_t)n * sizeof(float));
        stored_values(t, q, n, out, NULL);
        write_file(argv[5], out, (size_t)n * sizeof(float));
    } else if (strcmp(mode, "table") == 0) {
        uint32_t ids[GGML_TYPE_COUNT];
        for (int i = 0; i < GGML_TYPE_COUNT; i++) ids[i] = (uint32_t)ggml_get_type_traits_cpu((enum ggml_type)i)->vec_dot_type;
        write_file(argv[5], ids, sizeof(ids));
    } else {
        return 2;
    }
    return 0;
}
