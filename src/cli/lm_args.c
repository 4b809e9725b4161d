/* lm_args.c — parsing of the shared model options (see lm_args.h). */
#include "cli/lm_args.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static int parse_weights(lm_args *a, const char *s) {
    int n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        char num[64];
        if (len == 0 || len >= sizeof num || n == LM_ARGS_MAX_PATHS) return -1;
        memcpy(num, s, len);
        num[len] = 0;
        if (cli_parse_double(num, &a->weights[n]) || !(a->weights[n] >= 0)) return -1;
        n++;
        s += len;
        if (*s == ',' && !*++s) return -1;
    }
    if (n == 0) return -1;
    a->opt.nmix_weights = n;
    a->opt.mix_weights = a->weights;
    return 0;
}

int lm_args_parse(lm_args *a, const char *cmd, int argc, char **argv, int *i) {
    const char *o = argv[*i];
    if (*i + 1 >= argc) return 0;
    const char *v = argv[*i + 1];
    if (!strcmp(o, "-m")) {
        if (a->npaths == LM_ARGS_MAX_PATHS) {
            cli_error("%s: at most %d -m models", cmd, LM_ARGS_MAX_PATHS);
            return -1;
        }
        a->paths[a->npaths++] = v;
    } else if (!strcmp(o, "--lora")) {
        a->opt.lora = v;
    } else if (!strcmp(o, "--mix-weights")) {
        if (parse_weights(a, v)) {
            cli_error("%s: --mix-weights '%s' is not a comma-separated list of non-negative numbers", cmd, v);
            return -1;
        }
    } else if (!strcmp(o, "--mix")) {
        if (strcmp(v, "arithmetic") && strcmp(v, "geometric")) {
            cli_error("%s: --mix '%s' is not arithmetic or geometric", cmd, v);
            return -1;
        }
        a->opt.mix_rule = v;
    } else if (!strcmp(o, "--experts-top-k")) {
        long k;
        if (cli_parse_int(v, 1, 1000000, &k)) {
            cli_error("%s: --experts-top-k '%s' is not a positive integer", cmd, v);
            return -1;
        }
        a->opt.experts_top_k = (int)k;
    } else if (!strcmp(o, "--experts-temperature")) {
        double t;
        if (cli_parse_double(v, &t) || !(t > 0) || !isfinite(t)) {
            cli_error("%s: --experts-temperature '%s' is not a positive number", cmd, v);
            return -1;
        }
        a->opt.experts_temperature = t;
    } else if (!strcmp(o, "--experts-mode")) {
        if (strcmp(v, "auto") && strcmp(v, "merge") && strcmp(v, "unmerged") && strcmp(v, "ensemble")) {
            cli_error("%s: --experts-mode '%s' is not auto, merge, unmerged or ensemble", cmd, v);
            return -1;
        }
        a->opt.experts_mode = v;
    } else if (!strcmp(o, "--threads")) {
        long t;
        if (cli_parse_int(v, 1, 4096, &t)) {
            cli_error("%s: --threads '%s' is not a positive integer", cmd, v);
            return -1;
        }
        a->opt.threads = (int)t;
    } else {
        return 0;
    }
    (*i)++;
    return 1;
}

int lm_args_open(lm_args *a, const char *cmd, lm **out) {
    *out = NULL;
    if (a->npaths == 0) return cli_error("%s: need -m DIR (a model directory)", cmd);
    if (a->npaths > 1 && a->opt.nmix_weights > 0 && a->opt.nmix_weights != a->npaths)
        return cli_error("%s: --mix-weights has %d values for %d -m models", cmd, a->opt.nmix_weights, a->npaths);
    alloy_err err;
    if (lm_open(out, a->paths, a->npaths, &a->opt, &err)) return cli_fail(&err);
    return 0;
}
