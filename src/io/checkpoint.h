/* checkpoint.h — a Hugging Face checkpoint directory beyond its tensors:
 * config.json (read and written with cJSON) and the tokenizer and side files
 * that travel with a model. Tensors themselves are in safetensors.h. */
#ifndef ALLOY_IO_CHECKPOINT_H
#define ALLOY_IO_CHECKPOINT_H

#include <cJSON.h>

#include "alloy.h"

/* Parse DIR/config.json; the caller owns the result (cJSON_Delete). */
cJSON *ckpt_read_config(const char *dir, alloy_err *err);
/* Write cfg as DIR/config.json (pretty-printed). */
int ckpt_write_config(const char *dir, const cJSON *cfg, alloy_err *err);
/* num_hidden_layers (also text_config.num_hidden_layers, n_layer); -1 when absent. */
int ckpt_num_layers(const cJSON *cfg);
/* Set (or add) a string / number member. */
int ckpt_set_string(cJSON *obj, const char *key, const char *value);
int ckpt_set_number(cJSON *obj, const char *key, double value);

/* The side files a model directory carries next to its weights, copied by
 * ckpt_copy_side_files when present: tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json, generation_config.json, vocab.json, merges.txt,
 * tokenizer.model, added_tokens.json, chat_template.json, chat_template.jinja. */
extern const char *const CKPT_SIDE_FILES[];

/* Copy those present in src_dir into dst_dir; *copied counts them (may be NULL). */
int ckpt_copy_side_files(const char *src_dir, const char *dst_dir, int *copied, alloy_err *err);

#endif
