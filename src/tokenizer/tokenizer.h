/* tokenizer.h — byte-level BPE tokenizers loaded from a Hugging Face model
 * directory (tokenizer.json, optionally tokenizer_config.json), producing the
 * same ids as the Hugging Face `tokenizers` library for the Qwen2/Qwen3 and
 * Llama-3 families; decoding back to UTF-8; chat prompt formatting.
 *
 * Supported: model.type "BPE" with the ByteLevel byte->unicode alphabet;
 * pre_tokenizer ByteLevel or Sequence of Split(regex) + ByteLevel;
 * normalizer null or NFC; post_processor null, ByteLevel or
 * TemplateProcessing (single sequence); added tokens with their
 * special/lstrip/rstrip/single_word/normalized flags. Anything else is
 * rejected at load time with an error naming the file and the key.
 *
 * A loaded tokenizer is immutable except for an internal word cache guarded
 * by a mutex, so one tokenizer may be shared by threads. */
#ifndef ALLOY_TOKENIZER_H
#define ALLOY_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"

typedef struct tokenizer tokenizer;

/* A growable array of token ids. Zero-initialise it ({0}); tok_encode
 * appends to it; free v with tok_ids_free (or free(ids.v)). */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

void tok_ids_free(tok_ids *ids);
/* Append one id; -1 with err set on allocation failure. */
int tok_ids_push(tok_ids *ids, int32_t id, alloy_err *err);

/* Load dir/tokenizer.json (required) and dir/tokenizer_config.json
 * (optional: bos/eos tokens, add_bos_token, chat_template). On success
 * *out owns everything (free with tok_free); on failure *out is NULL and err
 * names the file and the key at fault (unsupported model type, bad JSON,
 * missing file, ...). */
int tok_load(tokenizer **out, const char *dir, alloy_err *err);
/* Same, from an explicit tokenizer.json path; config_path may be NULL. */
int tok_load_files(tokenizer **out, const char *json_path, const char *config_path,
                   alloy_err *err);
void tok_free(tokenizer *t);

/* Encode len bytes of UTF-8 text and APPEND the ids to *ids. Special/added
 * tokens written in the text (e.g. "<|im_end|>") become their ids.
 * add_special=true applies the post-processor (e.g. Llama-3 prepends
 * <|begin_of_text|>), as HF `encode(text, add_special_tokens=True)` does
 * (plus bos when tokenizer_config.json sets add_bos_token and the
 * post-processor does not add it, as transformers does); false encodes the
 * text alone. Invalid UTF-8 is an error. */
int tok_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
               tok_ids *ids, alloy_err *err);

/* Decode ids to UTF-8. *out is malloc'd, NUL-terminated (free it), *out_len
 * (may be NULL) excludes the NUL. skip_special drops tokens marked special.
 * Byte sequences that are not valid UTF-8 come out as U+FFFD, as HF does.
 * Unknown ids are an error. */
int tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
               char **out, size_t *out_len, alloy_err *err);

/* The raw bytes one token stands for (after byte-level decoding; added
 * tokens give their content). May be a partial UTF-8 sequence: streaming
 * callers should buffer until the bytes form whole characters. Returns NULL
 * for an id outside the vocabulary. The pointer lives as long as t. */
const char *tok_token_bytes(const tokenizer *t, int32_t id, size_t *len);
/* The vocabulary string of a token as written in tokenizer.json (byte-level
 * alphabet, e.g. "Ġthe"), NULL for an unknown id. Lives as long as t. */
const char *tok_token_str(const tokenizer *t, int32_t id);
/* Id of a vocabulary or added-token string (as in tokenizer.json), or -1. */
int32_t tok_token_id(const tokenizer *t, const char *str);
/* True if id is an added token marked special. */
bool tok_is_special(const tokenizer *t, int32_t id);

/* One more than the largest id (vocabulary and added tokens). Ids below it
 * that name no token (gaps) decode as errors. */
int32_t tok_vocab_size(const tokenizer *t);
/* bos/eos ids from tokenizer_config.json (falling back to the
 * post-processor / well-known names), -1 when none. */
int32_t tok_bos(const tokenizer *t);
int32_t tok_eos(const tokenizer *t);
/* True if generation should stop at id: the eos token, or the end-of-turn
 * and end-of-text tokens of the chat format (<|im_end|>, <|endoftext|>,
 * <|eot_id|>, <|end_of_text|>, <|eom_id|>) when present. */
bool tok_is_stop(const tokenizer *t, int32_t id);

/* Chat formats detected from tokenizer_config.json's chat_template. */
typedef enum tok_chat_kind {
    TOK_CHAT_NONE = 0,  /* no or unrecognised template */
    TOK_CHAT_CHATML,    /* Qwen: <|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n */
    TOK_CHAT_LLAMA3     /* <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n... */
} tok_chat_kind;

tok_chat_kind tok_chat_format(const tokenizer *t);

/* Wrap a single user message in the model's chat format (generation prompt
 * included) and return it as malloc'd NUL-terminated text in *out; error when
 * the model has no recognised chat template. The text already contains bos
 * where the format wants it: encode it with add_special=false. */
int tok_chat_prompt(const tokenizer *t, const char *user, char **out, alloy_err *err);
/* tok_chat_prompt followed by tok_encode(add_special=false): appends ids. */
int tok_encode_chat(const tokenizer *t, const char *user, tok_ids *ids, alloy_err *err);

#endif
