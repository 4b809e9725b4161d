/* utf8.c — UTF-8 decoding, validation and lossy repair, and the two
 * character classes the added-token flags need. No normalization here
 * (normalize.c) and no regex classes (PCRE2 does those). */
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/err.h"

int32_t utf8_next(const uint8_t *s, size_t n, size_t *i) {
    size_t p = *i;
    uint8_t c = s[p];
    if (c < 0x80) {
        *i = p + 1;
        return c;
    }
    int len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
    else return -1;
    if (p + (size_t)len > n) return -1;
    for (int k = 1; k < len; k++) {
        uint8_t d = s[p + (size_t)k];
        if ((d & 0xC0) != 0x80) return -1;
        cp = cp << 6 | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *i = p + (size_t)len;
    return (int32_t)cp;
}

size_t utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t at = i;
        if (utf8_next(s, n, &i) < 0) return at;
    }
    return n;
}

int utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int utf8_lossy(tok_buf *b, const uint8_t *s, size_t n, alloy_err *err) {
    static const char FFFD[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    size_t i = 0, run = 0;  /* s[run..i) is valid and not yet copied */
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t j = i;
        if (utf8_next(s, n, &j) >= 0) {
            i = j;
            continue;
        }
        /* Invalid: find the maximal subpart that starts like a valid sequence. */
        uint8_t lo = 0x80, hi = 0xBF;
        int len = 0;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) len = 3, lo = 0xA0;
        else if (c == 0xED) len = 3, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) len = 3;
        else if (c == 0xF0) len = 4, lo = 0x90;
        else if (c == 0xF4) len = 4, hi = 0x8F;
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        size_t k = i + 1;
        if (len && k < n && s[k] >= lo && s[k] <= hi) {
            k++;
            while (k < n && k < i + (size_t)len && (s[k] & 0xC0) == 0x80) k++;
        }
        if (tok_buf_put(b, s + run, i - run, err) || tok_buf_put(b, FFFD, 3, err)) return -1;
        i = run = k;
    }
    return tok_buf_put(b, s + run, n - run, err);
}

bool uc_is_space(uint32_t cp) {
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* Exact for ASCII; beyond it every non-space character counts as part of a
 * word (only the rarely used single_word flag depends on this). */
bool uc_is_alnum(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    return !uc_is_space(cp);
}
