/* bytelevel.c — the GPT-2 "ByteLevel" alphabet: every byte is written in
 * vocabulary strings as one printable code point (printable Latin-1 bytes as
 * themselves, the others as U+0100 + n in byte order). Encoding works on raw
 * bytes, so only the vocabulary strings are ever translated (at load). */
#include "tokenizer/tok_internal.h"

static bool printable(unsigned b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

/* Non-printable bytes are 0..32, 127..160 and 173, numbered 0..67 in order. */
uint32_t bytelevel_char(uint8_t b) {
    if (printable(b)) return b;
    if (b <= 32) return 256u + b;
    if (b <= 160) return 256u + 33 + (b - 127u);
    return 256u + 67;
}

static int char_byte(uint32_t cp) {
    if (cp < 256) return printable(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n < 33) return (int)n;
    if (n < 67) return (int)(127 + n - 33);
    return n == 67 ? 173 : -1;
}

long bytelevel_decode(const char *s, size_t len, uint8_t *out) {
    size_t i = 0;
    long n = 0;
    while (i < len) {
        int32_t cp = utf8_next((const uint8_t *)s, len, &i);
        if (cp < 0) return -1;
        int b = char_byte((uint32_t)cp);
        if (b < 0) return -1;
        out[n++] = (uint8_t)b;
    }
    return n;
}
