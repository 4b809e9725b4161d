/* llama_logits.c — run the real llama.cpp on a GGUF file, for checking and
 * benchmarking alloy against it on identical weights.
 *
 * llama.cpp is not linked: the libllama.so that npm's node-llama-cpp ships
 * prebuilt (node_modules/@node-llama-cpp/<platform>/bins/<platform>/) is
 * dlopen()ed, and the few llama.h declarations used here are restated below.
 * They match EXACTLY the llama.h of the llama.cpp source bundled in that
 * package (node_modules/node-llama-cpp/llama/gitRelease.bundle, commit
 * de3ff815ea7d, node-llama-cpp 3.22.1 / binaries release v0.5.0); the struct
 * layouts were checked field by field with offsetof() against that header.
 * Changing the pinned node-llama-cpp version means re-checking them.
 *
 * Modes:
 *   --ids 1,2,3 -o OUT.npy    evaluate the ids as one sequence (positions
 *                             0..T-1) and write all logits, float32 [T, vocab]
 *   --bench --prompt N --gen M  prefill N pseudo-random tokens, then M greedy
 *                             decode steps; prints tokens/s of both (best of --reps)
 *   --tokenize TEXT           print llama.cpp's token ids of TEXT
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra tests/peer/llama_logits.c -ldl -o llama_logits */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the llama.h subset (see the header comment: keep in sync) ---- */

typedef int32_t llama_token;
typedef int32_t llama_pos;
typedef int32_t llama_seq_id;
struct llama_model;
struct llama_context;
struct llama_vocab;
typedef void *llama_memory_t;

typedef struct llama_batch {
    int32_t n_tokens;
    llama_token *token;
    float *embd;
    llama_pos *pos;
    int32_t *n_seq_id;
    llama_seq_id **seq_id;
    int8_t *logits;
} llama_batch;

struct llama_model_params {
    void *devices;                     /* ggml_backend_dev_t * */
    const void *tensor_buft_overrides; /* const struct llama_model_tensor_buft_override * */
    int32_t n_gpu_layers;
    int split_mode;                    /* enum llama_split_mode */
    int load_mode;                     /* enum llama_load_mode */
    int lazy_mode;                     /* enum llama_lazy_mode */
    int32_t main_gpu;
    const float *tensor_split;
    bool (*progress_callback)(float progress, void *user_data);
    void *progress_callback_user_data;
    const void *kv_overrides;
    bool vocab_only;
    bool check_tensors;
    bool use_extra_bufts;
    bool no_host;
    bool no_alloc;
    bool load_mtp;
};

struct llama_context_params {
    uint32_t n_ctx;
    uint32_t n_batch;
    uint32_t n_ubatch;
    uint32_t n_seq_max;
    uint32_t n_rs_seq;
    uint32_t n_outputs_max;
    uint32_t n_outputs_max_per_seq;
    int32_t n_threads;
    int32_t n_threads_batch;
    int ctx_type;           /* enum llama_context_type */
    int rope_scaling_type;  /* enum llama_rope_scaling_type */
    int pooling_type;       /* enum llama_pooling_type */
    int attention_type;     /* enum llama_attention_type */
    int flash_attn_type;    /* enum llama_flash_attn_type */
    float rope_freq_base;
    float rope_freq_scale;
    float yarn_ext_factor;
    float yarn_attn_factor;
    float yarn_beta_fast;
    float yarn_beta_slow;
    uint32_t yarn_orig_ctx;
    float defrag_thold;
    void *cb_eval;          /* ggml_backend_sched_eval_callback */
    void *cb_eval_user_data;
    int type_k;             /* enum ggml_type */
    int type_v;
    void *abort_callback;   /* ggml_abort_callback */
    void *abort_callback_data;
    bool embeddings;
    bool offload_kqv;
    bool no_perf;
    bool op_offload;
    bool swa_full;
    bool kv_unified;
    void *samplers;         /* struct llama_sampler_seq_config * */
    size_t n_samplers;
    struct llama_context *ctx_other;
};

typedef void (*log_fn)(int level, const char *text, void *user);

/* The functions used, resolved with dlsym. */
typedef struct llama_api {
    void (*backend_init)(void);
    void (*backend_free)(void);
    void (*log_set)(log_fn cb, void *user);
    void (*load_all_from_path)(const char *dir); /* ggml_backend_load_all_from_path */
    struct llama_model_params (*model_default_params)(void);
    struct llama_context_params (*context_default_params)(void);
    struct llama_model *(*model_load_from_file)(const char *path, struct llama_model_params p);
    void (*model_free)(struct llama_model *m);
    struct llama_context *(*init_from_model)(struct llama_model *m, struct llama_context_params p);
    void (*free_ctx)(struct llama_context *c);
    const struct llama_vocab *(*model_get_vocab)(const struct llama_model *m);
    int32_t (*vocab_n_tokens)(const struct llama_vocab *v);
    llama_batch (*batch_init)(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
    void (*batch_free)(llama_batch b);
    int32_t (*decode)(struct llama_context *c, llama_batch b);
    float *(*get_logits_ith)(struct llama_context *c, int32_t i);
    llama_memory_t (*get_memory)(const struct llama_context *c);
    void (*memory_clear)(llama_memory_t mem, bool data);
    int32_t (*tokenize)(const struct llama_vocab *v, const char *text, int32_t len, llama_token *tokens,
                        int32_t n_max, bool add_special, bool parse_special);
    const char *(*print_system_info)(void);
} llama_api;

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "llama_logits: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

/* llama.cpp's log lines: errors always, the rest with --verbose (user
 * points at that flag). */
static void log_cb(int level, const char *text, void *user) {
    if (*(const bool *)user || level == 4 /* GGML_LOG_LEVEL_ERROR */) fputs(text, stderr);
}

/* Resolve libllama: a file, or the libllama*.so (not libllama-common) in a dir. */
static char *find_lib(const char *lib) {
    DIR *d = opendir(lib);
    if (!d) return strdup(lib);
    char *found = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "libllama", 8) || strstr(e->d_name, "common") || !strstr(e->d_name, ".so")) continue;
        found = malloc(strlen(lib) + strlen(e->d_name) + 2);
        sprintf(found, "%s/%s", lib, e->d_name);
        break;
    }
    closedir(d);
    if (!found) die("no libllama*.so in %s", lib);
    return found;
}

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) die("symbol %s not found in libllama (version mismatch?)", name);
    return p;
}

static void load_api(llama_api *a, const char *lib, const bool *verbose) {
    char *path = find_lib(lib);
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!h) die("%s", dlerror());
    /* POSIX guarantees that a dlsym() result converts to a function pointer. */
#define LOAD(field, name) *(void **)(&a->field) = sym(h, name)
    LOAD(backend_init, "llama_backend_init");
    LOAD(backend_free, "llama_backend_free");
    LOAD(log_set, "llama_log_set");
    LOAD(load_all_from_path, "ggml_backend_load_all_from_path");
    LOAD(model_default_params, "llama_model_default_params");
    LOAD(context_default_params, "llama_context_default_params");
    LOAD(model_load_from_file, "llama_model_load_from_file");
    LOAD(model_free, "llama_model_free");
    LOAD(init_from_model, "llama_init_from_model");
    LOAD(free_ctx, "llama_free");
    LOAD(model_get_vocab, "llama_model_get_vocab");
    LOAD(vocab_n_tokens, "llama_vocab_n_tokens");
    LOAD(batch_init, "llama_batch_init");
    LOAD(batch_free, "llama_batch_free");
    LOAD(decode, "llama_decode");
    LOAD(get_logits_ith, "llama_get_logits_ith");
    LOAD(get_memory, "llama_get_memory");
    LOAD(memory_clear, "llama_memory_clear");
    LOAD(tokenize, "llama_tokenize");
    LOAD(print_system_info, "llama_print_system_info");
#undef LOAD
    /* The CPU (and GPU) backends are separate libggml-*.so next to libllama. */
    char *dir = strdup(path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else strcpy(dir, ".");
    a->log_set(log_cb, (void *)verbose);
    a->load_all_from_path(dir);
    a->backend_init();
    free(dir);
    free(path);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int parse_ids(const char *s, llama_token **out) {
    int n = 0, cap = 64;
    llama_token *v = malloc((size_t)cap * sizeof *v);
    while (*s) {
        if (*s == ',' || *s == ' ') {
            s++;
            continue;
        }
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || x < 0 || x > INT32_MAX) die("bad token id list: %s", s);
        if (n == cap) v = realloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[n++] = (llama_token)x;
        s = end;
    }
    *out = v;
    return n;
}

static void write_npy(const char *path, const float *data, int rows, int cols) {
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot write %s", path);
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    uint16_t hlen = (uint16_t)(n + pad + 1);
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)(hlen >> 8);
    fwrite(pre, 1, 10, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    if (fwrite(data, sizeof(float), (size_t)rows * cols, f) != (size_t)rows * cols || fclose(f))
        die("write failed: %s", path);
}

/* Decode tokens[0..n) at positions pos0.. as sequence 0; outputs requested
 * for all tokens (all_logits) or only the last. */
static void decode(const llama_api *a, struct llama_context *ctx, const llama_token *tokens, int n, int pos0,
                   bool all_logits) {
    llama_batch b = a->batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = tokens[i];
        b.pos[i] = pos0 + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = (int8_t)(all_logits || i == n - 1);
    }
    b.n_tokens = n;
    int32_t rc = a->decode(ctx, b);
    a->batch_free(b);
    if (rc != 0) {
        char msg[32];
        snprintf(msg, sizeof msg, "%d", rc);
        die("llama_decode failed with %s", msg);
    }
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static void usage(void) {
    fprintf(stderr,
            "usage: llama_logits --lib LIBDIR -m MODEL.gguf --ids 1,2,3 -o OUT.npy [options]\n"
            "       llama_logits --lib LIBDIR -m MODEL.gguf --bench --prompt N --gen M [--reps R] [options]\n"
            "       llama_logits --lib LIBDIR -m MODEL.gguf --tokenize TEXT [--no-special]\n"
            "options: --threads N (default 1 for --ids, all online cores for --bench), --ngl N (GPU layers, default 0),\n"
            "         --kv f32|f16 (KV cache type) and --fa on|off|auto (flash attention); defaults:\n"
            "         f32 and off for --ids (exact f32 logits), llama.cpp's own (f16, auto) for --bench\n"
            "         --verbose (llama.cpp's logs)\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *lib = NULL, *model_path = NULL, *ids_s = NULL, *out = NULL, *text = NULL;
    bool bench = false, add_special = true, verbose = false;
    int n_prompt = 512, n_gen = 128, reps = 3, threads = 0, ngl = 0, kv_f32 = -1, fa = -2;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--bench")) bench = true;
        else if (!strcmp(o, "--verbose")) verbose = true;
        else if (!strcmp(o, "--no-special")) add_special = false;
        else if (!v) usage();
        else if (!strcmp(o, "--lib")) lib = argv[++i];
        else if (!strcmp(o, "-m")) model_path = argv[++i];
        else if (!strcmp(o, "--ids")) ids_s = argv[++i];
        else if (!strcmp(o, "-o")) out = argv[++i];
        else if (!strcmp(o, "--tokenize")) text = argv[++i];
        else if (!strcmp(o, "--prompt")) n_prompt = atoi(argv[++i]);
        else if (!strcmp(o, "--gen")) n_gen = atoi(argv[++i]);
        else if (!strcmp(o, "--reps")) reps = atoi(argv[++i]);
        else if (!strcmp(o, "--threads")) threads = atoi(argv[++i]);
        else if (!strcmp(o, "--ngl")) ngl = atoi(argv[++i]);
        else if (!strcmp(o, "--fa")) fa = !strcmp(argv[++i], "on") ? 1 : !strcmp(argv[i], "off") ? 0
                                           : !strcmp(argv[i], "auto") ? -1 : (usage(), 0);
        else if (!strcmp(o, "--kv")) kv_f32 = !strcmp(argv[++i], "f32") ? 1 : !strcmp(argv[i], "f16") ? 0 : (usage(), 0);
        else usage();
    }
    if (!lib || !model_path || (!bench && !text && (!ids_s || !out))) usage();
    if (bench && (n_prompt < 1 || n_gen < 0 || reps < 1)) usage();

    llama_api a;
    load_api(&a, lib, &verbose);
    if (verbose) fprintf(stderr, "%s\n", a.print_system_info());
    struct llama_model_params mp = a.model_default_params();
    mp.n_gpu_layers = ngl;
    struct llama_model *model = a.model_load_from_file(model_path, mp);
    if (!model) die("llama.cpp could not load %s (run with --verbose)", model_path);
    const struct llama_vocab *vocab = a.model_get_vocab(model);
    int n_vocab = a.vocab_n_tokens(vocab);

    if (text) {
        int cap = (int)strlen(text) + 16;
        llama_token *tok = malloc((size_t)cap * sizeof *tok);
        int n = a.tokenize(vocab, text, (int32_t)strlen(text), tok, cap, add_special, true);
        if (n < 0) die("llama_tokenize failed%s", "");
        for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", tok[i]);
        printf("\n");
        free(tok);
        a.model_free(model);
        a.backend_free();
        return 0;
    }

    llama_token *ids = NULL;
    int n_ids = 0;
    if (!bench) {
        n_ids = parse_ids(ids_s, &ids);
        if (n_ids == 0) die("empty --ids%s", "");
        for (int i = 0; i < n_ids; i++)
            if (ids[i] >= n_vocab) die("token id out of range: %s", ids_s);
    }
    int n_tok = bench ? n_prompt + n_gen : n_ids;
    struct llama_context_params cp = a.context_default_params();
    cp.n_ctx = (uint32_t)n_tok;
    cp.n_batch = (uint32_t)(bench ? n_prompt : n_ids);
    if (cp.n_ubatch > cp.n_batch) cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = 1;
    if (threads <= 0) threads = bench ? (int)sysconf(_SC_NPROCESSORS_ONLN) : 1;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = true;
    /* KV cache type: ggml's F32 = 0, F16 = 1. llama.cpp defaults to F16,
     * which costs ~1e-3 relative logit error; --ids uses F32 unless told. */
    if (kv_f32 < 0) kv_f32 = !bench;
    cp.type_k = cp.type_v = kv_f32 ? 0 : 1;
    /* Flash attention (llama_flash_attn_type: -1 auto, 0 off, 1 on). The CPU
     * kernel rounds to f16 internally (~1e-3 relative logit error, even with
     * an F32 cache); off, llama.cpp's f32 logits match a float64 reference to
     * ~1e-6. --ids turns it off unless told. */
    if (fa == -2) fa = bench ? -1 : 0;
    cp.flash_attn_type = fa;
    struct llama_context *ctx = a.init_from_model(model, cp);
    if (!ctx) die("llama_init_from_model failed for %s", model_path);

    if (!bench) {
        decode(&a, ctx, ids, n_ids, 0, true);
        float *all = malloc((size_t)n_ids * (size_t)n_vocab * sizeof *all);
        for (int i = 0; i < n_ids; i++) {
            const float *l = a.get_logits_ith(ctx, i);
            if (!l) die("no logits for a position%s", "");
            memcpy(all + (size_t)i * n_vocab, l, (size_t)n_vocab * sizeof *all);
        }
        write_npy(out, all, n_ids, n_vocab);
        fprintf(stderr, "llama_logits: %d x %d logits -> %s\n", n_ids, n_vocab, out);
        free(all);
    } else {
        llama_token *prompt = malloc((size_t)n_prompt * sizeof *prompt);
        uint64_t s = 0x9E3779B97F4A7C15ull;
        for (int i = 0; i < n_prompt; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            prompt[i] = (llama_token)((s >> 33) % (uint64_t)n_vocab);
        }
        double best_pp = 1e30, best_tg = 1e30;
        for (int r = 0; r < reps; r++) {
            a.memory_clear(a.get_memory(ctx), true);
            double t0 = now_s();
            decode(&a, ctx, prompt, n_prompt, 0, false);
            llama_token next = argmax(a.get_logits_ith(ctx, -1), n_vocab);
            double t1 = now_s();
            for (int g = 0; g < n_gen; g++) {
                decode(&a, ctx, &next, 1, n_prompt + g, true);
                next = argmax(a.get_logits_ith(ctx, -1), n_vocab);
            }
            double t2 = now_s();
            if (t1 - t0 < best_pp) best_pp = t1 - t0;
            if (t2 - t1 < best_tg) best_tg = t2 - t1;
        }
        printf("llama.cpp prefill: %d tokens in %.3f s = %.1f tok/s\n", n_prompt, best_pp, n_prompt / best_pp);
        if (n_gen > 0)
            printf("llama.cpp decode:  %d tokens in %.3f s = %.1f tok/s\n", n_gen, best_tg, n_gen / best_tg);
        printf("RESULT prefill_tok_s=%.2f decode_tok_s=%.2f\n", n_prompt / best_pp, n_gen ? n_gen / best_tg : 0.0);
        free(prompt);
    }
    free(ids);
    a.free_ctx(ctx);
    a.model_free(model);
    a.backend_free();
    return 0;
}
