/* err.c — formatting of library error messages (see err.h). */
#include "util/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int alloy_fail(alloy_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int alloy_wrap(alloy_err *err, const char *fmt, ...) {
    if (err) {
        char prefix[512], old[sizeof err->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof prefix, fmt, ap);
        va_end(ap);
        memcpy(old, err->msg, sizeof old);
        size_t k = strlen(prefix);
        if (k >= sizeof err->msg) k = sizeof err->msg - 1;
        memcpy(err->msg, prefix, k);
        size_t rest = strlen(old);
        if (rest > sizeof err->msg - 1 - k) rest = sizeof err->msg - 1 - k;
        memcpy(err->msg + k, old, rest);
        err->msg[k + rest] = 0;
    }
    return -1;
}
