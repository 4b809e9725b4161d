/* convert.c — `alloy convert DIR --to gguf -o OUT.gguf [--type f32|f16|bf16]`:
 * write a checkpoint directory as a GGUF file that llama.cpp loads. Argument
 * parsing and messages only; the format and the tensor mapping are
 * src/io/gguf.c. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "io/gguf.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: alloy convert DIR --to gguf -o OUT.gguf [--type f32|f16|bf16]\n\n"
            "  DIR           checkpoint directory (config.json, safetensors, tokenizer.json)\n"
            "  --to gguf     output format (only gguf)\n"
            "  -o OUT.gguf   output file (written to a temp file, renamed when complete)\n"
            "  --type T      type of the matrices: f32, f16 or bf16 (default f16);\n"
            "                norms and biases stay f32\n"
            "Supported architectures: qwen2, llama, and mistral without a sliding window (as llama).\n");
}

int cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *to = NULL, *type_s = "f16";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "--to") || !strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--type")) {
            if (!has_val) return cli_error("convert: %s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--to")) to = v;
            else if (!strcmp(a, "--type")) type_s = v;
            else out = v;
        } else if (a[0] == '-' && a[1]) {
            usage(stderr);
            return cli_error("convert: unknown option %s", a);
        } else if (!dir) {
            dir = a;
        } else {
            return cli_error("convert: more than one input directory (%s, %s)", dir, a);
        }
    }
    if (!dir || !out || !to) {
        usage(stderr);
        return cli_error("convert: DIR, --to and -o are required");
    }
    if (strcmp(to, "gguf")) return cli_error("convert: unknown output format '%s' (only gguf)", to);
    gguf_type type;
    if (!strcmp(type_s, "f32")) type = GGUF_TYPE_F32;
    else if (!strcmp(type_s, "f16")) type = GGUF_TYPE_F16;
    else if (!strcmp(type_s, "bf16")) type = GGUF_TYPE_BF16;
    else return cli_error("convert: --type must be f32, f16 or bf16, not '%s'", type_s);

    alloy_err err = {{0}};
    if (gguf_convert_dir(dir, out, type, stderr, &err)) return cli_fail(&err);
    fprintf(stderr, "wrote %s\n", out);
    return 0;
}
