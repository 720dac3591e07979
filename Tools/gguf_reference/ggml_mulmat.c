// Runs llama.cpp's CPU matrix product on a weight and activation rows, for QuantKit's fixtures
// (driven by make_mulmat_fixtures.py, which documents how to build and rerun it).
//
//   ggml_mulmat TYPE M K W_IN WQ_OUT X_IN N1 Y1_OUT [N2 Y2_OUT ...]
//
// W_IN: M rows of K float32 weights. They are quantized to TYPE (ggml type id) with ggml_quantize_chunk and no
// imatrix (llama-quantize's path), and the stored bytes written to WQ_OUT. X_IN: float32 activation rows of K
// values; for each Ni, the first Ni rows are multiplied, y = ggml_mul_mat(w, x) on the CPU backend with 2
// threads, and the Ni x M float32 products written to Yi_OUT (row i of x gives row i of the file).
//
// The weight is placed the way llama.cpp's model loader places a matmul weight (llama-model-loader.cpp
// weight_buft_supported + make_cpu_buft_list): the CPU device's extra buffer types first, in order, then the
// plain CPU buffer type; the first whose device supports ggml_mul_mat(w, f32 [K, 512]) with w in that buffer
// holds it. Uploading into the CPU_REPACK buffer repacks the blocks, and the product then runs the repack kernel.
// Prints "buffer=NAME repacked=0|1" (repacked: the tensor carries repack traits) on stdout.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
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

// llama-model-loader.cpp weight_buft_supported for GGML_OP_MUL_MAT: a dummy zero-size buffer of the type, a
// [K, 512] f32 right-hand side, and the device's supports_op.
static int buft_supports_mul_mat(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft, enum ggml_type t, int64_t m, int64_t k) {
    struct ggml_init_params p = { ggml_tensor_overhead() * 8, NULL, true };
    struct ggml_context * ctx = ggml_init(p);
    struct ggml_tensor * w = ggml_new_tensor_2d(ctx, t, k, m);
    struct ggml_tensor * b = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, w->ne[0], 512, w->ne[2], w->ne[3]);
    struct ggml_tensor * op = ggml_mul_mat(ctx, w, b);
    w->buffer = ggml_backend_buft_alloc_buffer(buft, 0);
    const int ok = ggml_backend_dev_supports_op(dev, op);
    ggml_backend_buffer_free(w->buffer);
    w->buffer = NULL;
    ggml_free(ctx);
    return ok;
}

int main(int argc, char ** argv) {
    if (argc < 9 || (argc - 7) % 2 != 0) { fprintf(stderr, "usage: see the comment at the top of ggml_mulmat.c\n"); return 2; }
    const enum ggml_type t = (enum ggml_type)atoi(argv[1]);
    const int64_t m = atoll(argv[2]), k = atoll(argv[3]);
    if (t < 0 || t >= GGML_TYPE_COUNT || m <= 0 || k <= 0) { fprintf(stderr, "bad arguments\n"); return 2; }

    // The weight, quantized as llama-quantize does without an imatrix.
    size_t size;
    float * wf = read_file(argv[4], &size);
    if (size != (size_t)(m * k) * sizeof(float)) { fprintf(stderr, "weight size mismatch\n"); return 2; }
    const size_t wbytes = (size_t)m * ggml_row_size(t, k);
    uint8_t * wq = malloc(wbytes);
    if (ggml_quantize_chunk(t, wf, wq, 0, m, k, NULL) != wbytes) { fprintf(stderr, "unexpected quantized size\n"); return 2; }
    write_file(argv[5], wq, wbytes);

    float * xf = read_file(argv[6], &size);
    const int64_t xrows = (int64_t)(size / ((size_t)k * sizeof(float)));

    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, 2);
    ggml_backend_reg_t reg = ggml_backend_cpu_reg();
    ggml_backend_dev_t dev = ggml_backend_reg_dev_get(reg, 0);

    // Buffer types in llama.cpp's CPU order: extra ones, then the CPU buffer.
    ggml_backend_buffer_type_t candidates[16];
    int nc = 0;
    ggml_backend_dev_get_extra_bufts_t get_extra =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (get_extra) {
        for (ggml_backend_buffer_type_t * e = get_extra(dev); e && *e && nc < 15; e++) candidates[nc++] = *e;
    }
    candidates[nc++] = ggml_backend_cpu_buffer_type();
    ggml_backend_buffer_type_t buft = NULL;
    for (int i = 0; i < nc && !buft; i++) {
        if (buft_supports_mul_mat(dev, candidates[i], t, m, k)) buft = candidates[i];
    }
    if (!buft) { fprintf(stderr, "no buffer type supports the product\n"); return 2; }

    struct ggml_init_params wp = { ggml_tensor_overhead() * 4, NULL, true };
    struct ggml_context * wctx = ggml_init(wp);
    struct ggml_tensor * w = ggml_new_tensor_2d(wctx, t, k, m);
    ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
    if (!wbuf) { fprintf(stderr, "weight allocation failed\n"); return 2; }
    ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    ggml_backend_tensor_set(w, wq, 0, wbytes);
    printf("buffer=%s repacked=%d\n", ggml_backend_buft_name(buft), w->extra != NULL);

    for (int a = 7; a + 1 < argc; a += 2) {
        const int64_t n = atoll(argv[a]);
        if (n <= 0 || n > xrows) { fprintf(stderr, "bad N %lld\n", (long long)n); return 2; }
        struct ggml_init_params gp = { ggml_tensor_overhead() * 8 + ggml_graph_overhead(), NULL, true };
        struct ggml_context * gctx = ggml_init(gp);
        struct ggml_tensor * x = ggml_new_tensor_2d(gctx, GGML_TYPE_F32, k, n);
        struct ggml_tensor * y = ggml_mul_mat(gctx, w, x);
        struct ggml_cgraph * gf = ggml_new_graph(gctx);
        ggml_build_forward_expand(gf, y);
        ggml_backend_buffer_t gbuf = ggml_backend_alloc_ctx_tensors(gctx, backend);
        ggml_backend_tensor_set(x, xf, 0, (size_t)(n * k) * sizeof(float));
        if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) { fprintf(stderr, "compute failed\n"); return 2; }
        float * out = malloc((size_t)(n * m) * sizeof(float));
        ggml_backend_tensor_get(y, out, 0, (size_t)(n * m) * sizeof(float));
        write_file(argv[a + 1], out, (size_t)(n * m) * sizeof(float));
        free(out);
        ggml_backend_buffer_free(gbuf);
        ggml_free(gctx);
    }
    ggml_backend_buffer_free(wbuf);
    ggml_free(wctx);
    ggml_backend_free(backend);
    return 0;
}
