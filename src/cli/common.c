/* common.c — helpers shared by the subcommands: error lines, number parsing. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("alloy: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_fail(const alloy_err *err) { return cli_error("%s", err->msg); }

int cli_parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int cli_parse_kmb(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v <= 0) return -1;
    double mul = 1;
    if (!strcmp(end, "") ) mul = 1;
    else if (!strcmp(end, "K") || !strcmp(end, "k")) mul = 1e3;
    else if (!strcmp(end, "M") || !strcmp(end, "m")) mul = 1e6;
    else if (!strcmp(end, "B") || !strcmp(end, "b") || !strcmp(end, "G") || !strcmp(end, "g")) mul = 1e9;
    else if (!strcmp(end, "Ki")) mul = 1024.0;
    else if (!strcmp(end, "Mi")) mul = 1024.0 * 1024;
    else if (!strcmp(end, "Gi")) mul = 1024.0 * 1024 * 1024;
    else return -1;
    double r = v * mul;
    if (r < 1 || r > 1.8e19) return -1;
    *out = (uint64_t)r;
    return 0;
}
