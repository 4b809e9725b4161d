/* mod_recipe.c — `merge_method: mod` recipes become MoD mixture directories
 * (mod_recipe.h): validation of the recipe, the members and their shared
 * tokenizer, then alloy_mixture.json + tokenizer files + alloy_recipe.yml +
 * README.md written atomically. No tensors are read or written here.
 * Not here: the manifest format (manifest.c), running a mixture (mixture.c). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "mix/manifest.h"
#include "mix/mixture.h"
#include "mix/mod_recipe.h"
#include "util/err.h"
#include "util/fs.h"

/* A numeric (scalar or boolean) parameter `name` from set s; 1 when found. */
static int scalar_param(const param_set *s, const char *name, const char *file, double *out, alloy_err *err) {
    const param_entry *e = param_find(s, name);
    if (!e) return 0;
    if (e->value.kind != PV_NUMBER)
        return alloy_fail(err, "%s:%d: mod parameter '%s' must be a single number", file, e->line, name);
    *out = e->value.num;
    return 1;
}

/* Reject parameters mod does not know (a typo would silently do nothing). */
static int known_params(const param_set *s, const char *const *known, const char *file, const char *where,
                        alloy_err *err) {
    for (int i = 0; i < s->n; i++) {
        bool ok = false;
        for (const char *const *k = known; *k; k++) ok = ok || !strcmp(*k, s->e[i].name);
        if (!ok)
            return alloy_fail(err, "%s:%d: unknown mod parameter '%s' in %s", file, s->e[i].line, s->e[i].name,
                              where);
    }
    return 0;
}

static int write_readme(const char *dir, const mix_manifest *m, const double *alpha, alloy_err *err) {
    size_t cap = 4096 + (size_t)m->n * (PATH_MAX + 64), len = 0;
    char *s = malloc(cap);
    if (!s) return alloy_fail(err, "out of memory");
    len += (size_t)snprintf(s + len, cap - len,
                            "---\ntags:\n- alloy\n- merge\n- mod\n---\n\n"
                            "# MoD mixture\n\n"
                            "This directory is a **Mixture of Distributions** (MoD, Dang & Ngo, arXiv 2411.00406) "
                            "made by alloy. It holds no weights: at every position its %d member models run on the "
                            "same tokens and their next-token distributions are mixed with the %s rule:\n\n",
                            m->n, mix_rule_name(m->rule));
    len += (size_t)snprintf(s + len, cap - len, "%s\n\n",
                            m->rule == MIX_ARITHMETIC ? "    p(x | context) = sum_i alpha_i * p_i(x | context)"
                                                      : "    p(x | context) ∝ prod_i p_i(x | context)^alpha_i");
    len += (size_t)snprintf(s + len, cap - len, "| member | weight | alpha (normalised) |\n|---|---|---|\n");
    for (int i = 0; i < m->n && len < cap; i++)
        len += (size_t)snprintf(s + len, cap - len, "| `%s` | %g | %.6g |\n", m->paths[i], m->weights[i], alpha[i]);
    if (len < cap)
        len += (size_t)snprintf(s + len, cap - len,
                                "\nRun it like any model directory: `alloy generate -m THIS_DIR`, `alloy ppl -m "
                                "THIS_DIR`, `alloy logits -m THIS_DIR`. The members must stay at the paths above. "
                                "The recipe that made it is `alloy_recipe.yml`; the mixture itself is "
                                "`alloy_mixture.json`.\n");
    if (len >= cap) len = cap - 1;
    char *path = fs_join(dir, "README.md");
    int rc = path ? fs_write_file(path, s, len, err) : alloy_fail(err, "out of memory");
    free(path);
    free(s);
    return rc;
}

int mix_write_from_recipe(const recipe *r, const char *out_dir, alloy_err *err) {
    const char *file = r->path ? r->path : "recipe";
    if (!r->merge_method || strcmp(r->merge_method, "mod"))
        return alloy_fail(err, "%s:%d: merge_method is '%s', not 'mod'", file, r->line_method,
                          r->merge_method ? r->merge_method : "");
    if (r->nslices > 0 || r->nmodels < 1)
        return alloy_fail(err, "%s: mod mixes whole models: list them under 'models:' (slices are not supported)",
                          file);
    if (r->base_model)
        return alloy_fail(err, "%s: mod has no base model: list every member under 'models:' and drop "
                               "'base_model: %s'", file, r->base_model);
    if (r->out_lora) return alloy_fail(err, "%s:%d: mod writes a mixture directory, not 'out: lora'", file, r->line_out);
    static const char *const top_known[] = {"weight", "geometric", "normalize", NULL};
    static const char *const model_known[] = {"weight", NULL};
    if (known_params(&r->params, top_known, file, "parameters", err)) return -1;
    double geometric = 0, normalize = 1, wdef = 1;
    if (scalar_param(&r->params, "geometric", file, &geometric, err) < 0 ||
        scalar_param(&r->params, "normalize", file, &normalize, err) < 0 ||
        scalar_param(&r->params, "weight", file, &wdef, err) < 0)
        return -1;

    int n = r->nmodels, rc = -1;
    mix_manifest m = {0};
    double *alpha = calloc((size_t)n, sizeof *alpha);
    char *tmp = NULL, *parent = NULL;
    m.n = n;
    m.rule = geometric != 0 ? MIX_GEOMETRIC : MIX_ARITHMETIC;
    m.paths = calloc((size_t)n, sizeof *m.paths);
    m.weights = calloc((size_t)n, sizeof *m.weights);
    if (!alpha || !m.paths || !m.weights) {
        alloy_fail(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const recipe_source *src = &r->models[i];
        if (known_params(&src->params, model_known, file, src->model, err)) goto done;
        m.weights[i] = wdef;
        int got = scalar_param(&src->params, "weight", file, &m.weights[i], err);
        if (got < 0) goto done;
        if (!(m.weights[i] >= 0) || !isfinite(m.weights[i])) {
            alloy_fail(err, "%s:%d: model '%s': weight %g must be a finite number >= 0", file, src->line,
                       src->model, m.weights[i]);
            goto done;
        }
        char real[PATH_MAX];
        if (!fs_is_dir(src->model) || !realpath(src->model, real)) {
            alloy_fail(err, "%s:%d: model '%s' is not a directory%s", file, src->line, src->model,
                       strchr(src->model, '+') ? " (LoRA inputs 'model+adapter' cannot be mixed)" : "");
            goto done;
        }
        if (!(m.paths[i] = strdup(real))) {
            alloy_fail(err, "out of memory");
            goto done;
        }
    }
    if (mix_normalize_weights(m.weights, n, alpha, file, err)) goto done;
    if (normalize == 0) {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += m.weights[i];
        if (fabs(sum - 1) > 1e-6) {
            alloy_fail(err, "%s: with normalize: false the mod weights must sum to 1 (they sum to %g)", file, sum);
            goto done;
        }
    }
    if (mix_check_members((const char *const *)m.paths, n, err)) goto done;
    /* The output must not replace one of its own members. */
    char real_out[PATH_MAX];
    if (realpath(out_dir, real_out))
        for (int i = 0; i < n; i++)
            if (!strcmp(real_out, m.paths[i])) {
                alloy_fail(err, "%s: the output directory is member %d of the mixture", out_dir, i + 1);
                goto done;
            }
    m.nparams = 2;
    const char *names[2] = {"geometric", "normalize"};
    double values[2] = {geometric != 0, normalize != 0};
    m.param_names = (char **)names;
    m.param_values = values;

    parent = fs_dirname(out_dir);
    if (!parent) {
        alloy_fail(err, "out of memory");
        goto done;
    }
    if (fs_mkdirs(parent, err) || !(tmp = fs_make_temp_sibling(out_dir, err))) goto done;
    char *rpath = NULL;
    if (mix_manifest_write(&m, tmp, err) || ckpt_copy_side_files(m.paths[0], tmp, NULL, err)) goto fail_tmp;
    if (r->text) {
        if (!(rpath = fs_join(tmp, "alloy_recipe.yml"))) {
            alloy_fail(err, "out of memory");
            goto fail_tmp;
        }
        int wrc = fs_write_file(rpath, r->text, strlen(r->text), err);
        free(rpath);
        if (wrc) goto fail_tmp;
    }
    if (write_readme(tmp, &m, alpha, err) || fs_commit_dir(tmp, out_dir, err)) goto fail_tmp;
    rc = 0;
    goto done;
fail_tmp:
    fs_remove_tree(tmp, NULL);
done:
    /* names/values are on the stack: detach them before freeing m. */
    m.param_names = NULL;
    m.param_values = NULL;
    m.nparams = 0;
    mix_manifest_free(&m);
    free(alpha);
    free(tmp);
    free(parent);
    return rc;
}
