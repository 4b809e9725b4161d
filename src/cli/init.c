/* init.c — `alloy init`: write a randomly initialised checkpoint of a
 * config.json's shape. Argument parsing and messages only; the work is
 * src/model/init.c. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "model/init.h"
#include "util/dtype.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: alloy init CONFIG.json OUT_DIR [--seed S] [--dtype bf16|f16|f32] [--tokenizer DIR]\n\n"
            "  CONFIG.json      a Qwen2/Llama/Mistral config.json giving the shapes\n"
            "  OUT_DIR          checkpoint directory to create (model.safetensors, config.json)\n"
            "  --seed S         random seed (default 0); same seed, same bytes\n"
            "  --dtype T        weight dtype (default bf16)\n"
            "  --tokenizer DIR  copy tokenizer.json and the other tokenizer files from DIR\n");
}

int cmd_init(int argc, char **argv) {
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    model_init_options opt = {.seed = 0, .dtype = ALLOY_BF16, .tokenizer_dir = NULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--seed") && has) {
            long v;
            if (cli_parse_int(argv[++i], 0, 0x7fffffffffffffffL, &v))
                return cli_error("init: --seed '%s' is not a non-negative integer", argv[i]);
            opt.seed = (uint64_t)v;
        } else if (!strcmp(a, "--dtype") && has) {
            if (dtype_parse_torch(argv[++i], &opt.dtype) ||
                (opt.dtype != ALLOY_F32 && opt.dtype != ALLOY_BF16 && opt.dtype != ALLOY_F16))
                return cli_error("init: --dtype '%s' is not one of bf16, f16, f32", argv[i]);
        } else if (!strcmp(a, "--tokenizer") && has) {
            opt.tokenizer_dir = argv[++i];
        } else if (a[0] != '-' && npos < 2) {
            pos[npos++] = a;
        } else {
            usage(stderr);
            return cli_error("init: unknown or incomplete option '%s'", a);
        }
    }
    if (npos != 2) {
        usage(stderr);
        return cli_error("init: expected CONFIG.json and OUT_DIR");
    }
    alloy_err err;
    if (model_init_random(pos[0], pos[1], &opt, &err)) return cli_fail(&err);
    return 0;
}
