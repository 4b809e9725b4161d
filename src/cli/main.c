/* main.c — entry point of the `alloy` command: dispatches to subcommands.
 *
 * Also sets the one process-wide default the library relies on: glibc keeps
 * large buffers in the heap (see main()). */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "util/spin.h"
#include "cli/cli.h"


static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} COMMANDS[] = {
    {"merge", cmd_merge, "merge models with a mergekit YAML recipe"},
    {"tokenize", cmd_tokenize, "print token ids of a text (or --decode ids)"},
    {"generate", cmd_generate, "generate text from a prompt"},
    {"ppl", cmd_ppl, "perplexity of a model on a text file"},
    {"logits", cmd_logits, "write the logits of one forward pass as .npy"},
    {"init", cmd_init, "create a randomly initialised checkpoint"},
    {"convert", cmd_convert, "convert a checkpoint to GGUF"},
    {"extract-lora", cmd_extract_lora, "extract a LoRA adapter from a fine-tune"},
    {"train", cmd_train, "LoRA or full fine-tuning"},
    {"experts", cmd_experts, "TTMM expert libraries"},
    {"ttt", cmd_ttt, "test-time training baseline: LoRA on a prompt's nearest documents"},
};

static void usage(FILE *f) {
    fprintf(f, "alloy %s — merge, run and train language models\n\nusage: alloy COMMAND [ARGS]\n\n",
            ALLOY_VERSION);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-13s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    fprintf(f, "\nRun `alloy COMMAND --help` for the options of a command.\n");
}

int main(int argc, char **argv) {
    /* Merges and models allocate and free buffers of hundreds of MB per
     * tensor; keep them in the heap instead of mmap/munmap-ing (and
     * re-faulting zeroed pages) each time. */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("alloy %s\n", ALLOY_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "merge")) alloy_short_spin(argv); /* may run this again, with a short spin */
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++) {
        if (strcmp(argv[1], COMMANDS[i].name) != 0) continue;
        return COMMANDS[i].fn(argc - 1, argv + 1);
    }
    return cli_error("unknown command '%s' (see `alloy --help`)", argv[1]);
}
