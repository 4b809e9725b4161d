/* cli.h — the alloy command line: one file per subcommand, shared helpers.
 *
 * Subcommands parse their own arguments, call the library, and turn an
 * alloy_err into one line on stderr ("alloy: error: ...") and exit status 1.
 * They own no merge, model or tokenizer logic. */
#ifndef ALLOY_CLI_H
#define ALLOY_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "alloy.h"

/* Each returns the process exit status. argv[0] is the subcommand name. */
int cmd_merge(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_extract_lora(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_experts(int argc, char **argv);
int cmd_ttt(int argc, char **argv);

/* Print "alloy: error: <msg>" to stderr; returns 1 (the exit status). */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Same, for a library error. */
int cli_fail(const alloy_err *err);

/* Parse numbers strictly (whole string, range-checked); 0 on success. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_double(const char *s, double *out);
/* Sizes with an optional K/M/B (10^3, 10^6, 10^9) or Ki/Mi/Gi suffix. */
int cli_parse_kmb(const char *s, uint64_t *out);

#endif
