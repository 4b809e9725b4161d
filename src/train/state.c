/* state.c — saving and restoring the training state (see state.h). */
#include "train/state.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

static const char MAGIC[8] = {'A', 'L', 'L', 'O', 'Y', 'T', 'R', '1'};

int tr_state_save(const char *path, const char *fingerprint, int64_t step, uint64_t seed,
                  const tr_pset *ps, const tr_adamw *opt, alloy_err *err) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) return alloy_fail(err, "out of memory");
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(tmp);
        return alloy_fail(err, "%s: cannot create training state", path);
    }
    uint64_t n = ps->n;
    uint32_t len = (uint32_t)strlen(fingerprint);
    bool ok = fwrite(MAGIC, 8, 1, f) == 1 && fwrite(&step, 8, 1, f) == 1 && fwrite(&seed, 8, 1, f) == 1 &&
              fwrite(&n, 8, 1, f) == 1 && fwrite(&len, 4, 1, f) == 1 && fwrite(fingerprint, 1, len, f) == len &&
              fwrite(ps->data, sizeof(float), n, f) == n && fwrite(opt->m, sizeof(float), n, f) == n &&
              fwrite(opt->v, sizeof(float), n, f) == n;
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        free(tmp);
        return alloy_fail(err, "%s: cannot write training state (disk full?)", path);
    }
    free(tmp);
    return 0;
}

int tr_state_load(const char *path, const char *fingerprint, uint64_t seed, tr_pset *ps, tr_adamw *opt,
                  int64_t *step, alloy_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return alloy_fail(err, "%s: cannot open training state", path);
    char magic[8];
    uint64_t s_seed, n;
    uint32_t len;
    int rc = -1;
    char *fp = NULL;
    if (fread(magic, 8, 1, f) != 1 || memcmp(magic, MAGIC, 8) || fread(step, 8, 1, f) != 1 ||
        fread(&s_seed, 8, 1, f) != 1 || fread(&n, 8, 1, f) != 1 || fread(&len, 4, 1, f) != 1 || len > 65536) {
        alloy_fail(err, "%s: not an alloy training state", path);
        goto done;
    }
    fp = calloc(len + 1, 1);
    if (!fp || fread(fp, 1, len, f) != len) {
        alloy_fail(err, "%s: truncated training state", path);
        goto done;
    }
    if (strcmp(fp, fingerprint) || s_seed != seed || n != ps->n) {
        alloy_fail(err, "%s: saved by a different run (%s); remove it to start over", path, fp);
        goto done;
    }
    if (fread(ps->data, sizeof(float), n, f) != n || fread(opt->m, sizeof(float), n, f) != n ||
        fread(opt->v, sizeof(float), n, f) != n) {
        alloy_fail(err, "%s: truncated training state", path);
        goto done;
    }
    opt->t = *step;
    rc = 0;
done:
    free(fp);
    fclose(f);
    return rc;
}
