/* test_tokenizer.c — the byte-level BPE tokenizer (src/tokenizer) on a tiny
 * tokenizer.json built here: merges by rank, pre-tokenizer split, added
 * tokens and their flags, post-processor, NFC, decode, chat formats, and the
 * load errors (unsupported model type, missing file). Conformance with HF on
 * the real Qwen3/Llama-3 files is tests/tokenizer/conformance.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/tokenizer.h"
#include "util/fs.h"

static char root[64];

/* The ByteLevel character of byte b, as UTF-8. */
static void byte_char(int b, char out[4]) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    unsigned cp = printable ? (unsigned)b : b <= 32 ? 256u + (unsigned)b : b <= 160 ? 256u + 33 + (unsigned)b - 127 : 256u + 67;
    if (cp < 0x80) out[0] = (char)cp, out[1] = 0;
    else out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
}

enum { ID_HE = 256, ID_LL, ID_HELL, ID_HELLO, ID_GW, ID_EL, ID_END, ID_X };

/* Write dir/tokenizer.json (and a tokenizer_config.json with chat_template
 * when tmpl is non-NULL). */
static void write_tok(const char *dir, const char *model_type, int nfc, int bos_template, const char *tmpl) {
    cJSON *j = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(j, "model");
    cJSON_AddStringToObject(model, "type", model_type);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; b < 256; b++) {
        char c[4];
        byte_char(b, c);
        cJSON_AddNumberToObject(vocab, c, b);
    }
    const char *extra[] = {"he", "ll", "hell", "hello", "\xc4\xa0w", "el"};
    for (int i = 0; i < 6; i++) cJSON_AddNumberToObject(vocab, extra[i], ID_HE + i);
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 w", "e l"};
    cJSON_AddItemToObject(model, "merges", cJSON_CreateStringArray(merges, 6));
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens");
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", ID_END);
    cJSON_AddStringToObject(a, "content", "<|end|>");
    cJSON_AddBoolToObject(a, "special", 1);
    cJSON_AddItemToArray(added, a);
    a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", ID_X);
    cJSON_AddStringToObject(a, "content", "<x>");
    cJSON_AddBoolToObject(a, "special", 0);
    cJSON_AddBoolToObject(a, "lstrip", 1);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddItemToArray(added, a);
    if (nfc) cJSON_AddItemToObject(j, "normalizer", cJSON_Parse("{\"type\":\"NFC\"}"));
    cJSON_AddItemToObject(j, "pre_tokenizer", cJSON_Parse(
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
        "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
        "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}"));
    if (bos_template)
        cJSON_AddItemToObject(j, "post_processor", cJSON_Parse(
            "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|end|>\",\"type_id\":0}},"
            "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<|end|>\":{\"id\":\"<|end|>\",\"ids\":[262],\"tokens\":[\"<|end|>\"]}}}"));
    cJSON_AddItemToObject(j, "decoder", cJSON_Parse("{\"type\":\"ByteLevel\"}"));
    char *txt = cJSON_PrintUnformatted(j);
    char *path = fs_join(dir, "tokenizer.json");
    assert_int_equal(fs_write_file(path, txt, strlen(txt), NULL), 0);
    free(path);
    free(txt);
    cJSON_Delete(j);
    path = fs_join(dir, "tokenizer_config.json");
    unlink(path);
    if (tmpl) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "chat_template", tmpl);
        cJSON_AddStringToObject(c, "eos_token", "<|end|>");
        txt = cJSON_PrintUnformatted(c);
        assert_int_equal(fs_write_file(path, txt, strlen(txt), NULL), 0);
        free(txt);
        cJSON_Delete(c);
    }
    free(path);
}

static int setup(void **state) {
    (void)state;
    strcpy(root, "/tmp/alloy-tok-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return fs_remove_tree(root, NULL);
}

static tokenizer *load(int nfc, int bos, const char *tmpl) {
    write_tok(root, "BPE", nfc, bos, tmpl);
    tokenizer *t;
    alloy_err err;
    int rc = tok_load(&t, root, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
    return t;
}

static void expect(const tokenizer *t, const char *text, bool special, const int32_t *want, size_t n) {
    tok_ids ids = {0};
    alloy_err err;
    assert_int_equal(tok_encode(t, text, strlen(text), special, &ids, &err), 0);
    assert_int_equal(ids.n, n);
    for (size_t i = 0; i < n; i++) assert_int_equal(ids.v[i], want[i]);
    tok_ids_free(&ids);
}

static void test_merges_by_rank(void **state) {
    (void)state;
    tokenizer *t = load(0, 0, NULL);
    expect(t, "hello", false, (int32_t[]){ID_HELLO}, 1);
    /* "ell": (l,l) has a lower rank than (e,l), so it wins though it is to the right */
    expect(t, "ell", false, (int32_t[]){'e', ID_LL}, 2);
    /* split into "hello", " world": the space goes with the word */
    expect(t, "hello world", false, (int32_t[]){ID_HELLO, ID_GW, 'o', 'r', 'l', 'd'}, 6);
    /* newline maps to its ByteLevel byte id */
    expect(t, "he\n", false, (int32_t[]){ID_HE, 10}, 2);
    assert_int_equal(tok_vocab_size(t), ID_X + 1);
    assert_string_equal(tok_token_str(t, ID_GW), "\xc4\xa0w");
    size_t len;
    const char *b = tok_token_bytes(t, ID_GW, &len);
    assert_int_equal(len, 2);
    assert_memory_equal(b, " w", 2);
    assert_int_equal(tok_token_id(t, "hell"), ID_HELL);
    assert_int_equal(tok_token_id(t, "<|end|>"), ID_END);
    assert_int_equal(tok_token_id(t, "nope"), -1);
    tok_free(t);
}

static void test_long_word(void **state) {
    (void)state;
    tokenizer *t = load(0, 0, NULL);
    size_t n = 20001;
    char *s = malloc(n + 1);
    memset(s, 'l', n);
    s[n] = 0;
    tok_ids ids = {0};
    alloy_err err;
    assert_int_equal(tok_encode(t, s, n, false, &ids, &err), 0);
    assert_int_equal(ids.n, n / 2 + 1);  /* pairs of l, then a lone l */
    assert_int_equal(ids.v[0], ID_LL);
    assert_int_equal(ids.v[ids.n - 1], 'l');
    tok_ids_free(&ids);
    free(s);
    tok_free(t);
}

static void test_added_tokens(void **state) {
    (void)state;
    tokenizer *t = load(0, 0, NULL);
    expect(t, "hi<|end|>hello", false, (int32_t[]){'h', 'i', ID_END, ID_HELLO}, 4);
    expect(t, "<|end|><|end|>", false, (int32_t[]){ID_END, ID_END}, 2);
    /* a partial token is plain text */
    expect(t, "<|end|", false, (int32_t[]){'<', '|', 'e', 'n', 'd', '|'}, 6);
    /* lstrip: the spaces before <x> disappear into it */
    expect(t, "a  <x>b", false, (int32_t[]){'a', ID_X, 'b'}, 3);
    assert_true(tok_is_special(t, ID_END));
    assert_false(tok_is_special(t, ID_X));
    tok_free(t);
}

static void test_post_processor(void **state) {
    (void)state;
    tokenizer *t = load(0, 1, NULL);
    expect(t, "hello", true, (int32_t[]){ID_END, ID_HELLO}, 2);
    expect(t, "hello", false, (int32_t[]){ID_HELLO}, 1);
    tok_free(t);
}

static void test_nfc(void **state) {
    (void)state;
    tokenizer *t = load(1, 0, NULL);
    /* e + combining acute composes to U+00E9 = C3 A9 */
    expect(t, "e\xcc\x81", false, (int32_t[]){0xC3, 0xA9}, 2);
    expect(t, "\xc3\xa9", false, (int32_t[]){0xC3, 0xA9}, 2);
    tok_free(t);
    t = load(0, 0, NULL);  /* without the normalizer the bytes stay */
    expect(t, "e\xcc\x81", false, (int32_t[]){'e', 0xCC, 0x81}, 3);
    tok_free(t);
}

static void test_decode(void **state) {
    (void)state;
    tokenizer *t = load(0, 0, NULL);
    const char *text = "hello world <|end|> \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\r\n\tx";
    tok_ids ids = {0};
    alloy_err err;
    assert_int_equal(tok_encode(t, text, strlen(text), true, &ids, &err), 0);
    char *out;
    size_t len;
    assert_int_equal(tok_decode(t, ids.v, ids.n, false, &out, &len, &err), 0);
    assert_string_equal(out, text);
    assert_int_equal(len, strlen(text));
    free(out);
    assert_int_equal(tok_decode(t, (int32_t[]){ID_HELLO, ID_END}, 2, true, &out, NULL, &err), 0);
    assert_string_equal(out, "hello");
    free(out);
    /* a lone continuation byte decodes as U+FFFD */
    assert_int_equal(tok_decode(t, (int32_t[]){'a', 0x80, 'b'}, 3, false, &out, NULL, &err), 0);
    assert_string_equal(out, "a\xef\xbf\xbd" "b");
    free(out);
    assert_int_equal(tok_decode(t, (int32_t[]){9999}, 1, false, &out, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "9999"));
    tok_ids_free(&ids);
    /* invalid UTF-8 input is refused */
    assert_int_equal(tok_encode(t, "a\xff", 2, false, &ids, &err), -1);
    assert_non_null(strstr(err.msg, "UTF-8"));
    tok_ids_free(&ids);
    tok_free(t);
}

static void test_chat(void **state) {
    (void)state;
    alloy_err err;
    char *s;
    tokenizer *t = load(0, 0, "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}");
    assert_int_equal(tok_chat_format(t), TOK_CHAT_CHATML);
    assert_int_equal(tok_chat_prompt(t, "hi", &s, &err), 0);
    assert_string_equal(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    assert_int_equal(tok_eos(t), ID_END);
    assert_true(tok_is_stop(t, ID_END));
    assert_false(tok_is_stop(t, ID_HELLO));
    tok_free(t);
    t = load(0, 0, "{{ '<|start_header_id|>' + role }}");
    assert_int_equal(tok_chat_format(t), TOK_CHAT_LLAMA3);
    assert_int_equal(tok_chat_prompt(t, "  hi \n", &s, &err), 0);
    assert_string_equal(s, "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(s);
    tok_free(t);
    t = load(0, 0, NULL);
    assert_int_equal(tok_chat_format(t), TOK_CHAT_NONE);
    assert_int_equal(tok_chat_prompt(t, "hi", &s, &err), -1);
    assert_non_null(strstr(err.msg, "chat_template"));
    tok_free(t);
}

static void test_load_errors(void **state) {
    (void)state;
    alloy_err err;
    tokenizer *t = (tokenizer *)1;
    char *empty = fs_join(root, "empty");
    assert_int_equal(fs_mkdirs(empty, NULL), 0);
    assert_int_equal(tok_load(&t, empty, &err), -1);
    assert_null(t);
    assert_non_null(strstr(err.msg, "tokenizer.json"));
    free(empty);

    write_tok(root, "Unigram", 0, 0, NULL);
    assert_int_equal(tok_load(&t, root, &err), -1);
    assert_null(t);
    assert_non_null(strstr(err.msg, "Unigram"));
    assert_non_null(strstr(err.msg, root));

    char *path = fs_join(root, "tokenizer.json");
    assert_int_equal(fs_write_file(path, "{\"model\": [", 11, NULL), 0);
    assert_int_equal(tok_load(&t, root, &err), -1);
    assert_non_null(strstr(err.msg, "invalid JSON"));
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merges_by_rank), cmocka_unit_test(test_long_word),
        cmocka_unit_test(test_added_tokens),   cmocka_unit_test(test_post_processor),
        cmocka_unit_test(test_nfc),            cmocka_unit_test(test_decode),
        cmocka_unit_test(test_chat),           cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
