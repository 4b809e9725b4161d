/* err.h — error reporting for the alloy library.
 *
 * Library functions never print or exit. They return 0 on success and -1 on
 * failure, after writing a one-line, human-readable message into an
 * alloy_err supplied by the caller. Only src/cli turns that into
 * "alloy: error: ..." and an exit status. */
#ifndef ALLOY_UTIL_ERR_H
#define ALLOY_UTIL_ERR_H

#include "alloy.h"

/* Format a message into err (if non-NULL) and return -1, so that callers can
 * write `return alloy_fail(err, "...", ...);`. */
int alloy_fail(alloy_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix an existing message with more context ("file.safetensors: " ...).
 * Returns -1. */
int alloy_wrap(alloy_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
