/* train.c — `alloy train`: argument parsing and progress lines for LoRA and
 * full fine-tuning. The training itself is src/train/trainer.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "train/trainer.h"
#include "util/dtype.h"

static const char USAGE[] =
    "usage: alloy train -m BASE_DIR -d DATA -o OUT_DIR [options]\n"
    "  -m, --model DIR        base checkpoint (Qwen2/Llama, safetensors + tokenizer.json)\n"
    "  -d, --data FILE        .txt (packed into ctx windows) or .jsonl ({\"text\"} or\n"
    "                         {\"prompt\",\"completion\"}: loss on the completion only)\n"
    "  -o, --out DIR          PEFT adapter dir (LoRA) or HF checkpoint dir (--full)\n"
    "  --lora-rank R          16          --lora-alpha A   32\n"
    "  --lora-targets LIST    q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (or all-linear)\n"
    "  --full                 train every weight; writes a checkpoint (--dtype to override its dtype)\n"
    "  --steps N | --epochs E number of optimizer steps, or passes over the data (default 1 epoch)\n"
    "  --lr LR                2e-4; linear warmup over --warmup S steps, then cosine decay to 0\n"
    "  --batch B  --ctx T     8, 512\n"
    "  --weight-decay W       0 (AdamW, decoupled; not on norms/biases)\n"
    "  --grad-clip C          1.0 (global L2 norm; 0 disables)\n"
    "  --seed S  --threads N  --log-every N (10)\n"
    "  --eval FILE --eval-every N   mean loss on FILE every N steps and at the end\n"
    "  --save-every N         save resumable state to OUT_DIR.state/ every N steps; a later run\n"
    "                         with the same arguments resumes from it automatically\n";

typedef struct cli_state {
    int64_t log_every;
    int tty;
} cli_state;

static void on_log(void *user, const tr_log *lg) {
    cli_state *s = user;
    switch (lg->kind) {
    case TR_LOG_STEP:
        if (lg->step % s->log_every == 0 || lg->step == lg->total || lg->step == 1) {
            if (s->tty) fputs("\r\033[K", stderr);
            fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.3g  grad-norm %.3f  %.0f tok/s\n",
                    (long long)lg->step, (long long)lg->total, (double)lg->loss, (double)lg->lr,
                    lg->grad_norm, lg->tok_per_s);
        } else if (s->tty) {
            int w = 30, fill = (int)(w * lg->step / (lg->total ? lg->total : 1));
            fprintf(stderr, "\r[%.*s%*s] %lld/%lld loss %.4f", fill, "##############################",
                    w - fill, "", (long long)lg->step, (long long)lg->total, (double)lg->loss);
        }
        break;
    case TR_LOG_EVAL:
        if (s->tty) fputs("\r\033[K", stderr);
        fprintf(stderr, "step %lld/%lld  eval loss %.4f\n", (long long)lg->step, (long long)lg->total,
                lg->eval_loss);
        break;
    case TR_LOG_RESUME:
        fprintf(stderr, "resuming from %s at step %lld/%lld\n", lg->msg, (long long)lg->step,
                (long long)lg->total);
        break;
    case TR_LOG_INFO:
        if (s->tty) fputs("\r\033[K", stderr);
        fprintf(stderr, "step %lld/%lld  %s\n", (long long)lg->step, (long long)lg->total, lg->msg);
        break;
    }
    fflush(stderr);
}

int cmd_train(int argc, char **argv) {
    tr_options o;
    tr_options_default(&o);
    long v;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (!strcmp(a, "--full")) {
            o.full = true;
            continue;
        }
        if (i + 1 >= argc) return cli_error("train: %s needs a value (see alloy train --help)", a);
        const char *val = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o.base_dir = val;
        else if (!strcmp(a, "-d") || !strcmp(a, "--data")) o.data_path = val;
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) o.out_dir = val;
        else if (!strcmp(a, "--lora-targets")) o.lora_targets = val;
        else if (!strcmp(a, "--eval")) o.eval_path = val;
        else if (!strcmp(a, "--dump-ref")) o.dump_dir = val; /* hidden: reference tests */
        else if (!strcmp(a, "--dtype")) {
            if (dtype_parse_torch(val, &o.out_dtype) || !dtype_is_mergeable(o.out_dtype))
                return cli_error("train: --dtype '%s' is not one of bfloat16, float16, float32", val);
            o.out_dtype_set = true;
        } else if (!strcmp(a, "--lora-rank") || !strcmp(a, "--batch") || !strcmp(a, "--ctx") ||
                   !strcmp(a, "--threads")) {
            if (cli_parse_int(val, 1, 1 << 20, &v)) return cli_error("train: %s must be a positive integer, got '%s'", a, val);
            if (!strcmp(a, "--lora-rank")) o.lora_rank = (int)v;
            else if (!strcmp(a, "--batch")) o.batch = (int)v;
            else if (!strcmp(a, "--ctx")) o.ctx = (int)v;
            else o.threads = (int)v;
        } else if (!strcmp(a, "--steps") || !strcmp(a, "--warmup") || !strcmp(a, "--eval-every") ||
                   !strcmp(a, "--save-every") || !strcmp(a, "--log-every") || !strcmp(a, "--seed") ||
                   !strcmp(a, "--stop-after")) {
            if (cli_parse_int(val, 0, 1L << 40, &v)) return cli_error("train: %s must be an integer >= 0, got '%s'", a, val);
            if (!strcmp(a, "--steps")) o.steps = v;
            else if (!strcmp(a, "--warmup")) o.warmup = v;
            else if (!strcmp(a, "--eval-every")) o.eval_every = v;
            else if (!strcmp(a, "--save-every")) o.save_every = v;
            else if (!strcmp(a, "--log-every")) o.log_every = v ? v : 1;
            else if (!strcmp(a, "--seed")) o.seed = (uint64_t)v;
            else o.stop_after = v; /* hidden: simulates an interruption in tests */
        } else if (!strcmp(a, "--lr") || !strcmp(a, "--lora-alpha") || !strcmp(a, "--epochs") ||
                   !strcmp(a, "--weight-decay") || !strcmp(a, "--grad-clip")) {
            if (cli_parse_double(val, &d) || d < 0) return cli_error("train: %s must be a number >= 0, got '%s'", a, val);
            if (!strcmp(a, "--lr")) o.lr = (float)d;
            else if (!strcmp(a, "--lora-alpha")) o.lora_alpha = (float)d;
            else if (!strcmp(a, "--epochs")) o.epochs = d;
            else if (!strcmp(a, "--weight-decay")) o.weight_decay = (float)d;
            else o.grad_clip = (float)d;
        } else {
            return cli_error("train: unknown option '%s' (see alloy train --help)", a);
        }
    }
    if (!o.base_dir || !o.data_path || !o.out_dir)
        return cli_error("train: -m BASE_DIR, -d DATA and -o OUT_DIR are required (see alloy train --help)");
    if (o.steps > 0 && o.epochs > 0) return cli_error("train: give --steps or --epochs, not both");
    if (o.lr <= 0) return cli_error("train: --lr must be positive");
    cli_state s = {.log_every = o.log_every, .tty = isatty(2)};
    o.on_log = on_log;
    o.user = &s;
    alloy_err err = {{0}};
    if (tr_train(&o, &err)) return cli_fail(&err);
    return 0;
}
