/* registry.c — the table of merge methods, lookup by name and suggestions for
 * misspelled names. The methods themselves live in one file per family
 * (linear.c, slerp.c, sphere.c, task_arithmetic.c, model_stock.c, sce.c,
 * nearswap.c, passthrough.c; the SVD family in drm.c, tsv.c, knots.c). */
#include <string.h>

#include "merge/method.h"

extern const merge_method merge_linear, merge_slerp, merge_nuslerp, merge_multislerp, merge_karcher,
    merge_task_arithmetic, merge_ties, merge_dare_ties, merge_dare_linear, merge_breadcrumbs,
    merge_breadcrumbs_ties, merge_della, merge_della_linear, merge_model_stock, merge_sce, merge_nearswap,
    merge_passthrough, merge_drm, merge_tsv, merge_knots;

static const merge_method *const methods[] = {
    &merge_linear,      &merge_slerp,      &merge_nuslerp,          &merge_multislerp, &merge_karcher,
    &merge_task_arithmetic, &merge_ties,   &merge_dare_ties,        &merge_dare_linear, &merge_breadcrumbs,
    &merge_breadcrumbs_ties, &merge_della, &merge_della_linear,     &merge_model_stock, &merge_sce,
    &merge_nearswap,    &merge_passthrough, &merge_drm,            &merge_tsv,        &merge_knots,
    NULL,
};

const merge_method *const *merge_method_all(void) { return methods; }

const merge_method *merge_method_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; methods[i]; i++)
        if (!strcmp(methods[i]->name, name)) return methods[i];
    return NULL;
}

/* Levenshtein distance, two rows; names longer than 63 bytes are too far anyway. */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 1 << 20;
    int prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            int m = sub < del ? sub : del;
            cur[j] = m < ins ? m : ins;
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb];
}

const char *merge_method_suggest(const char *name) {
    if (!name) return NULL;
    const char *best = NULL;
    int bd = 4; /* accept distance <= 3; the first of equally close names wins */
    for (int i = 0; methods[i]; i++) {
        int d = edit_distance(name, methods[i]->name);
        if (d < bd) bd = d, best = methods[i]->name;
    }
    return best;
}
