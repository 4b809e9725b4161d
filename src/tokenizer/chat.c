/* chat.c — wrapping one user message in the model's chat format (ChatML for
 * Qwen, the header format of Llama-3), as the chat_template in
 * tokenizer_config.json would render it with add_generation_prompt. The
 * format is detected at load (tokenizer.c); no Jinja is evaluated. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/err.h"

int tok_chat_prompt(const tokenizer *t, const char *user, char **out, alloy_err *err) {
    *out = NULL;
    tok_buf b = {0};
    size_t n = strlen(user);
    int rc;
    if (t->chat == TOK_CHAT_CHATML) {
        rc = tok_buf_put(&b, "<|im_start|>user\n", 17, err) || tok_buf_put(&b, user, n, err) ||
             tok_buf_put(&b, "<|im_end|>\n<|im_start|>assistant\n", 33, err);
    } else if (t->chat == TOK_CHAT_LLAMA3) {
        /* the template trims the message (Jinja's |trim) and starts with bos */
        const char *s = user, *e = user + n;
        while (s < e && (*s == ' ' || (*s >= '\t' && *s <= '\r'))) s++;
        while (e > s && (e[-1] == ' ' || (e[-1] >= '\t' && e[-1] <= '\r'))) e--;
        const char *bos = t->bos >= 0 ? tok_token_str(t, t->bos) : "";
        rc = tok_buf_put(&b, bos, strlen(bos), err) ||
             tok_buf_put(&b, "<|start_header_id|>user<|end_header_id|>\n\n", 42, err) ||
             tok_buf_put(&b, s, (size_t)(e - s), err) ||
             tok_buf_put(&b, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", 57, err);
    } else {
        return alloy_fail(err, "%s: tokenizer_config.json has no chat_template alloy recognises "
                          "(ChatML with <|im_start|> or Llama-3 with <|start_header_id|>)", t->json_path);
    }
    if (rc) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    return 0;
}

int tok_encode_chat(const tokenizer *t, const char *user, tok_ids *ids, alloy_err *err) {
    char *text;
    if (tok_chat_prompt(t, user, &text, err)) return -1;
    int rc = tok_encode(t, text, strlen(text), false, ids, err);
    free(text);
    return rc;
}
