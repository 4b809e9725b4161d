/* plan.c — recipe → validated per-tensor merge plan (see plan.h).
 *
 * Layout of the work: open the models a recipe names (deduplicated), turn the
 * recipe into "normalised slices" (the models form is one slice spanning all
 * layers, as in mergekit's normalize_config), enumerate the output tensors
 * (embeddings, then each output layer, then the remaining non-layer tensors),
 * and resolve inputs and parameters for each. Nothing is read from tensor
 * data here; only headers, configs and adapters. */
#include "merge/plan.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "util/dtype.h"
#include "util/err.h"
#include "util/fs.h"

/* One source of a normalised slice: a model and its layer window. */
typedef struct nsource {
    int model;
    int start, len;
    int param_source; /* index for recipe_param, -1 for an implicit base */
} nsource;

typedef struct nslice {
    int recipe_slice; /* -1 in the models form */
    int n;
    nsource *src;
    int base_src;     /* index into src of the base model, -1 when none */
} nslice;

/* ---- small helpers ---- */

static int add_warning(merge_plan *p, const char *fmt, const char *a, const char *b, int line) {
    char buf[512];
    snprintf(buf, sizeof buf, fmt, a, b, line);
    char **w = realloc(p->warnings, sizeof *w * (size_t)(p->nwarnings + 1));
    if (!w) return -1;
    p->warnings = w;
    p->warnings[p->nwarnings++] = strdup(buf);
    return 0;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Find "layers.<N>." in a tensor name: returns N and sets digits_at, ndigits,
 * or -1 for a tensor outside the layer stack. */
static int layer_of(const char *name, size_t *digits_at, size_t *ndigits) {
    for (const char *s = strstr(name, "layers."); s; s = strstr(s + 1, "layers.")) {
        if (s != name && s[-1] != '.') continue;
        const char *d = s + 7, *e = d;
        while (isdigit((unsigned char)*e)) e++;
        if (e == d || *e != '.') continue;
        *digits_at = (size_t)(d - name);
        *ndigits = (size_t)(e - d);
        return atoi(d);
    }
    return -1;
}

/* name with its layer number replaced by `layer` (malloc'd). */
static char *with_layer(const char *name, size_t at, size_t nd, int layer) {
    size_t len = strlen(name) + 16;
    char *r = malloc(len);
    if (r) snprintf(r, len, "%.*s%d%s", (int)at, name, layer, name + at + nd);
    return r;
}

/* ---- models ---- */

static char *resolve_dir(const merge_plan *p, const char *path) {
    if (path[0] == '/' || fs_is_dir(path)) return strdup(path);
    char *alt = fs_join(p->recipe_dir, path);
    if (alt && fs_is_dir(alt)) return alt;
    free(alt);
    return strdup(path);
}

/* Index of the model named `ref`, opening it on first use. */
static int model_index(merge_plan *p, const char *ref, int line, alloy_err *err) {
    for (int i = 0; i < p->nmodels; i++)
        if (!strcmp(p->models[i].ref, ref)) return i;
    plan_model *ms = realloc(p->models, sizeof *ms * (size_t)(p->nmodels + 1));
    if (!ms) return alloy_fail(err, "out of memory");
    p->models = ms;
    plan_model *m = &p->models[p->nmodels];
    memset(m, 0, sizeof *m);
    m->ref = strdup(ref);
    p->nmodels++;

    /* "dir+adapter": the whole string may itself be a directory name. */
    const char *plus = strchr(ref, '+');
    if (plus && !fs_is_dir(ref)) {
        char *dir = strndup(ref, (size_t)(plus - ref));
        m->path = resolve_dir(p, dir);
        m->lora_path = resolve_dir(p, plus + 1);
        free(dir);
    } else {
        m->path = resolve_dir(p, ref);
    }
    const char *rname = p->rc.path;
    if (!fs_is_dir(m->path))
        return alloy_fail(err, "%s:%d: model '%s': directory %s not found", rname, line, ref, m->path);
    if (st_open_dir(&m->st, m->path, err)) return alloy_wrap(err, "%s:%d: model '%s': ", rname, line, ref);
    char *cfg_path = fs_join(m->path, "config.json");
    if (fs_is_file(cfg_path)) {
        m->config = ckpt_read_config(m->path, err);
        if (!m->config) {
            free(cfg_path);
            return -1;
        }
    }
    free(cfg_path);
    m->num_layers = m->config ? ckpt_num_layers(m->config) : -1;
    int max_layer = -1;
    for (int i = 0; i < m->st.ntensors; i++) {
        size_t at, nd;
        int l = layer_of(m->st.tensors[i].name, &at, &nd);
        if (l > max_layer) max_layer = l;
    }
    if (m->num_layers < 0) m->num_layers = max_layer + 1;
    else if (max_layer + 1 != m->num_layers && max_layer >= 0)
        return alloy_fail(err, "%s: config.json says %d layers but the weights have %d", m->path,
                          m->num_layers, max_layer + 1);
    if (m->lora_path) {
        if (peft_load(&m->lora, m->lora_path, err)) return alloy_wrap(err, "%s:%d: ", rname, line);
        m->has_lora = true;
        for (int i = 0; i < m->lora.nmodules; i++) {
            const peft_module *mod = &m->lora.modules[i];
            const st_tensor *w = st_find(&m->st, mod->weight_name);
            if (!w)
                return alloy_fail(err, "%s: LoRA module targets '%s', which %s does not have", m->lora_path,
                                  mod->weight_name, m->path);
            if (w->ndim != 2 || w->shape[0] != mod->B->shape[0] || w->shape[1] != mod->A->shape[1])
                return alloy_fail(err, "%s: module '%s': B·A is [%lld, %lld] but the weight is %s%lld%s",
                                  m->lora_path, mod->weight_name, (long long)mod->B->shape[0],
                                  (long long)mod->A->shape[1], w->ndim == 2 ? "[" : "a ",
                                  w->ndim == 2 ? (long long)w->shape[0] : (long long)w->ndim,
                                  w->ndim == 2 ? "x..]" : "-D tensor");
        }
    }
    return p->nmodels - 1;
}

/* ---- parameters ---- */

static int resolve_params(merge_plan *p, const nslice *ns, plan_tensor *pt, const char *const *in_names,
                          const int *src_of_input, double t, alloy_err *err) {
    const merge_method *me = p->method;
    int np = me->nparams;
    pt->gparam = calloc((size_t)np + 1, sizeof(double));
    pt->mparam = calloc((size_t)(pt->k * np) + 1, sizeof(double));
    if (!pt->gparam || !pt->mparam) return alloy_fail(err, "out of memory");
    for (int q = 0; q < np; q++) {
        const merge_param_def *d = &me->params[q];
        if (!d->per_model) {
            double v;
            if (!recipe_param(&p->rc, ns->recipe_slice, -1, d->name, pt->name, t, &v)) {
                if (d->required)
                    return alloy_fail(err, "%s: method '%s' requires parameter '%s' (missing for tensor %s)",
                                      p->rc.path, me->name, d->name, pt->name);
                v = d->dflt;
            } else if (!(v >= d->lo && v <= d->hi)) {
                return alloy_fail(err, "%s: parameter '%s' = %g is outside [%g, %g] (tensor %s)", p->rc.path,
                                  d->name, v, d->lo, d->hi, pt->name);
            }
            pt->gparam[q] = v;
            continue;
        }
        for (int i = 0; i < pt->k; i++) {
            const nsource *s = &ns->src[src_of_input[i]];
            double v;
            if (!recipe_param(&p->rc, ns->recipe_slice, s->param_source, d->name, in_names[src_of_input[i]], t,
                              &v)) {
                if (d->required)
                    return alloy_fail(err, "%s: method '%s' requires parameter '%s' for model '%s' (tensor %s)",
                                      p->rc.path, me->name, d->name, p->models[s->model].ref, pt->name);
                v = d->dflt;
            } else if (!(v >= d->lo && v <= d->hi)) {
                return alloy_fail(err, "%s: parameter '%s' = %g for model '%s' is outside [%g, %g] (tensor %s)",
                                  p->rc.path, d->name, v, p->models[s->model].ref, d->lo, d->hi, pt->name);
            }
            pt->mparam[(size_t)i * (size_t)np + (size_t)q] = v;
        }
    }
    return 0;
}

/* ---- tensors ---- */

static int out_dtype_for(const merge_plan *p, alloy_dtype in, alloy_dtype *out, alloy_err *err) {
    const char *want = p->rc.out_dtype ? p->rc.out_dtype : p->rc.dtype;
    if (!dtype_is_mergeable(in) || !want) {
        *out = in;
        return 0;
    }
    if (dtype_parse_torch(want, out))
        return alloy_fail(err, "%s: unknown dtype '%s' (use bfloat16, float16 or float32)", p->rc.path, want);
    return 0;
}

/* Add output tensor `out_name`, whose input in source j of ns is in_names[j]. */
static int add_tensor(merge_plan *p, const nslice *ns, const char *out_name, const char *const *in_names,
                      double t, alloy_err *err) {
    plan_tensor *ts = realloc(p->tensors, sizeof *ts * (size_t)(p->ntensors + 1));
    if (!ts) return alloy_fail(err, "out of memory");
    p->tensors = ts;
    plan_tensor *pt = &p->tensors[p->ntensors++];
    memset(pt, 0, sizeof *pt);
    pt->name = strdup(out_name);

    plan_input *all = calloc((size_t)ns->n, sizeof *all);
    int *src_of_input = calloc((size_t)ns->n, sizeof(int));
    if (!all || !src_of_input) {
        free(all);
        free(src_of_input);
        return alloy_fail(err, "out of memory");
    }
    int rc = 0;
    bool mergeable = true;
    for (int j = 0; j < ns->n && !rc; j++) {
        const plan_model *m = &p->models[ns->src[j].model];
        const st_tensor *x = st_find(&m->st, in_names[j]);
        if (!x) {
            rc = alloy_fail(err, "%s: tensor '%s' is missing (model '%s'; present in '%s')", m->path,
                            in_names[j], m->ref, p->models[ns->src[0].model].ref);
            break;
        }
        const st_tensor *x0 = j ? all[0].t : x;
        if (x->ndim != x0->ndim || memcmp(x->shape, x0->shape, sizeof(int64_t) * (size_t)x->ndim)) {
            char s0[96], s1[96];
            shape_str(s0, sizeof s0, x0->ndim, x0->shape);
            shape_str(s1, sizeof s1, x->ndim, x->shape);
            rc = alloy_fail(err, "shape mismatch for tensor '%s': %s in %s/%s but %s in %s/%s", in_names[j], s0,
                            p->models[ns->src[0].model].path, p->models[ns->src[0].model].st.files[all[0].t->file].path
                            + strlen(p->models[ns->src[0].model].path) + 1, s1, m->path,
                            m->st.files[x->file].path + strlen(m->path) + 1);
            break;
        }
        all[j].model = ns->src[j].model;
        all[j].t = x;
        all[j].lora = m->has_lora ? peft_find(&m->lora, in_names[j]) : NULL;
        mergeable = mergeable && dtype_is_mergeable(x->dtype);
    }
    if (!rc) {
        const plan_input *ref = ns->base_src >= 0 ? &all[ns->base_src] : &all[0];
        pt->ndim = ref->t->ndim;
        memcpy(pt->shape, ref->t->shape, sizeof pt->shape);
        pt->numel = ref->t->numel;
        rc = out_dtype_for(p, ref->t->dtype, &pt->out_dtype, err);
        pt->copy = *ref;
        pt->merge = mergeable;
        if (ref->lora && !mergeable) rc = alloy_fail(err, "%s: LoRA targets non-float tensor", pt->name);
    }
    if (!rc && pt->merge) {
        bool use_base = p->method->base != BASE_NONE && ns->base_src >= 0;
        pt->has_base = use_base;
        if (use_base) pt->base = all[ns->base_src];
        pt->inputs = calloc((size_t)ns->n, sizeof *pt->inputs);
        if (!pt->inputs) rc = alloy_fail(err, "out of memory");
        for (int j = 0; j < ns->n && !rc; j++) {
            if (use_base && j == ns->base_src) continue;
            src_of_input[pt->k] = j;
            pt->inputs[pt->k++] = all[j];
        }
        if (!rc) rc = resolve_params(p, ns, pt, in_names, src_of_input, t, err);
    }
    free(all);
    free(src_of_input);
    return rc;
}

/* Check the model count against the method, once per normalised slice. */
static int check_counts(const merge_plan *p, const nslice *ns, alloy_err *err) {
    const merge_method *me = p->method;
    int k = ns->n - (me->base != BASE_NONE && ns->base_src >= 0 ? 1 : 0);
    if (me->base == BASE_REQUIRED && ns->base_src < 0)
        return alloy_fail(err, "%s: method '%s' needs a base_model%s", p->rc.path, me->name,
                          ns->recipe_slice >= 0 ? " among each slice's sources" : "");
    if (k < me->min_models || (me->max_models && k > me->max_models)) {
        if (me->min_models == me->max_models)
            return alloy_fail(err, "%s: method '%s' merges exactly %d model%s%s, the recipe gives %d", p->rc.path,
                              me->name, me->min_models, me->min_models == 1 ? "" : "s",
                              me->base == BASE_REQUIRED ? " besides the base" : "", k);
        return alloy_fail(err, "%s: method '%s' needs at least %d model%s%s, the recipe gives %d", p->rc.path,
                          me->name, me->min_models, me->min_models == 1 ? "" : "s",
                          me->base == BASE_REQUIRED ? " besides the base" : "", k);
    }
    return 0;
}

/* Non-layer tensors of the reference model: embeddings (pre == true) or the rest. */
static int add_outer_tensors(merge_plan *p, const nslice *ns, bool pre, alloy_err *err) {
    const plan_model *ref = &p->models[ns->src[ns->base_src >= 0 ? ns->base_src : 0].model];
    const char **names = calloc((size_t)ns->n, sizeof *names);
    if (!names) return alloy_fail(err, "out of memory");
    int rc = 0;
    for (int i = 0; i < ref->st.ntensors && !rc; i++) {
        const char *name = ref->st.tensors[i].name;
        size_t at, nd;
        if (layer_of(name, &at, &nd) >= 0) continue;
        if ((strstr(name, "embed") != NULL) != pre) continue;
        for (int j = 0; j < ns->n; j++) names[j] = name;
        rc = add_tensor(p, ns, name, names, 0.0, err);
    }
    free(names);
    return rc;
}

/* Output layers of one normalised slice, starting at output layer p->out_layers. */
static int count_layer_tensors(const plan_model *m, int layer) {
    int n = 0;
    for (int i = 0; i < m->st.ntensors; i++) {
        size_t at, nd;
        n += layer_of(m->st.tensors[i].name, &at, &nd) == layer;
    }
    return n;
}

static int add_slice_layers(merge_plan *p, const nslice *ns, alloy_err *err) {
    /* The base (else the first source) is the template of each layer's tensors. */
    const nsource *s0 = &ns->src[ns->base_src >= 0 ? ns->base_src : 0];
    const plan_model *tmpl = &p->models[s0->model];
    char **names = calloc((size_t)ns->n, sizeof *names);
    if (!names) return alloy_fail(err, "out of memory");
    int rc = 0;
    for (int idx = 0; idx < s0->len && !rc; idx++) {
        double t = s0->len > 1 ? (double)idx / (s0->len - 1) : 1.0;
        int found = 0;
        for (int i = 0; i < tmpl->st.ntensors && !rc; i++) {
            const char *name = tmpl->st.tensors[i].name;
            size_t at, nd;
            if (layer_of(name, &at, &nd) != s0->start + idx) continue;
            found++;
            char *out = with_layer(name, at, nd, p->out_layers);
            for (int j = 0; j < ns->n; j++) names[j] = with_layer(name, at, nd, ns->src[j].start + idx);
            rc = add_tensor(p, ns, out, (const char *const *)names, t, err);
            for (int j = 0; j < ns->n; j++) {
                free(names[j]);
                names[j] = NULL;
            }
            free(out);
        }
        if (!rc && !found)
            rc = alloy_fail(err, "%s: layer %d has no tensors", tmpl->path, s0->start + idx);
        /* A source with tensors the template lacks would lose them silently. */
        for (int j = 0; j < ns->n && !rc; j++) {
            const plan_model *m = &p->models[ns->src[j].model];
            int have = count_layer_tensors(m, ns->src[j].start + idx);
            if (have != found)
                rc = alloy_fail(err, "%s: layer %d has %d tensors but layer %d of %s has %d", m->path,
                                ns->src[j].start + idx, have, s0->start + idx, tmpl->path, found);
        }
        p->out_layers++;
    }
    free(names);
    return rc;
}

static void free_nslices(nslice *ns, int n) {
    for (int i = 0; i < n; i++) free(ns[i].src);
    free(ns);
}

/* Turn the recipe's models or slices into normalised slices. */
static int normalise(merge_plan *p, nslice **out, int *nout, alloy_err *err) {
    const recipe *r = &p->rc;
    int n = r->nmodels ? 1 : r->nslices;
    nslice *ns = calloc((size_t)n, sizeof *ns);
    if (!ns) return alloy_fail(err, "out of memory");
    *out = ns;
    *nout = n;
    if (r->nmodels) {
        ns->recipe_slice = -1;
        ns->src = calloc((size_t)r->nmodels + 1, sizeof *ns->src);
        if (!ns->src) return alloy_fail(err, "out of memory");
        ns->base_src = -1;
        for (int i = 0; i < r->nmodels; i++) {
            int m = model_index(p, r->models[i].model, r->models[i].line, err);
            if (m < 0) return -1;
            ns->src[ns->n++] = (nsource){m, 0, p->models[m].num_layers, i};
            if (m == p->base && ns->base_src < 0) ns->base_src = ns->n - 1;
        }
        if (p->base >= 0 && ns->base_src < 0 && p->method->base != BASE_NONE) {
            ns->base_src = ns->n;
            ns->src[ns->n++] = (nsource){p->base, 0, p->models[p->base].num_layers, -1};
        }
        for (int j = 1; j < ns->n; j++)
            if (ns->src[j].len != ns->src[0].len)
                return alloy_fail(err, "%s: layer count mismatch: '%s' has %d layers, '%s' has %d", r->path,
                                  p->models[ns->src[0].model].ref, ns->src[0].len, p->models[ns->src[j].model].ref,
                                  ns->src[j].len);
        return 0;
    }
    for (int s = 0; s < r->nslices; s++) {
        const recipe_slice *rs = &r->slices[s];
        ns[s].recipe_slice = s;
        ns[s].base_src = -1;
        ns[s].src = calloc((size_t)rs->nsources, sizeof *ns[s].src);
        if (!ns[s].src) return alloy_fail(err, "out of memory");
        for (int j = 0; j < rs->nsources; j++) {
            const recipe_source *src = &rs->sources[j];
            int m = model_index(p, src->model, src->line, err);
            if (m < 0) return -1;
            int a = src->has_range ? src->layer_start : 0;
            int b = src->has_range ? src->layer_end : p->models[m].num_layers;
            if (b > p->models[m].num_layers)
                return alloy_fail(err, "%s:%d: layer_range [%d, %d] is past the %d layers of '%s'", r->path,
                                  src->line, a, b, p->models[m].num_layers, src->model);
            ns[s].src[ns[s].n++] = (nsource){m, a, b - a, j};
            if (m == p->base && ns[s].base_src < 0) ns[s].base_src = j;
            if (b - a != ns[s].src[0].len)
                return alloy_fail(err, "%s:%d: all sources of a slice must span the same number of layers "
                                  "(%d vs %d)", r->path, src->line, b - a, ns[s].src[0].len);
        }
    }
    return 0;
}

static int check_unused_params(merge_plan *p) {
    const recipe *r = &p->rc;
    const param_set *sets[1024];
    int nsets = 0;
    sets[nsets++] = &r->params;
    for (int i = 0; i < r->nmodels && nsets < 1024; i++) sets[nsets++] = &r->models[i].params;
    for (int s = 0; s < r->nslices && nsets < 1024; s++) {
        sets[nsets++] = &r->slices[s].params;
        for (int j = 0; j < r->slices[s].nsources && nsets < 1024; j++) sets[nsets++] = &r->slices[s].sources[j].params;
    }
    for (int k = 0; k < nsets; k++)
        for (int i = 0; i < sets[k]->n; i++) {
            bool known = false;
            for (int q = 0; q < p->method->nparams && !known; q++)
                known = !strcmp(p->method->params[q].name, sets[k]->e[i].name);
            if (!known && add_warning(p, "parameter '%s' is not used by method '%s' (line %d)", sets[k]->e[i].name,
                                      p->method->name, sets[k]->e[i].line))
                return -1;
        }
    return 0;
}

static int build_config(merge_plan *p, alloy_err *err) {
    int ref = p->base >= 0 ? p->base : p->tensors[0].copy.model;
    if (p->models[ref].config) {
        p->out_config = cJSON_Duplicate(p->models[ref].config, 1);
    } else {
        p->out_config = cJSON_CreateObject();
        if (add_warning(p, "%s%s: no config.json; the output gets a minimal one (line %d)", p->models[ref].path, "",
                        0))
            return alloy_fail(err, "out of memory");
    }
    if (!p->out_config) return alloy_fail(err, "out of memory");
    alloy_dtype dt = ALLOY_F32;
    for (int i = 0; i < p->ntensors; i++)
        if (p->tensors[i].merge) {
            dt = p->tensors[i].out_dtype;
            break;
        }
    if (ckpt_set_string(p->out_config, "torch_dtype", dtype_torch_name(dt)))
        return alloy_fail(err, "out of memory");
    int have = ckpt_num_layers(p->out_config);
    if (have >= 0 && have != p->out_layers) {
        cJSON *target = cJSON_HasObjectItem(p->out_config, "num_hidden_layers")
                            ? p->out_config
                            : cJSON_GetObjectItemCaseSensitive(p->out_config, "text_config");
        if (target && ckpt_set_number(target, "num_hidden_layers", p->out_layers))
            return alloy_fail(err, "out of memory");
    }
    return 0;
}

static int pick_tokenizer(merge_plan *p, alloy_err *err) {
    const char *ts = p->rc.tokenizer_source;
    if (ts && !strcmp(ts, "union"))
        return alloy_fail(err, "%s: tokenizer_source: union is not supported yet (use base or a model)",
                          p->rc.path);
    if (!ts || !strcmp(ts, "base")) {
        int ref = p->base >= 0 ? p->base : 0;
        p->tokenizer_dir = strdup(p->models[ref].path);
        return 0;
    }
    for (int i = 0; i < p->nmodels; i++)
        if (!strcmp(p->models[i].ref, ts)) {
            p->tokenizer_dir = strdup(p->models[i].path);
            return 0;
        }
    char *plain = strdup(ts), *plus = strchr(plain, '+');
    if (plus && !fs_is_dir(ts)) *plus = 0;
    p->tokenizer_dir = resolve_dir(p, plain);
    free(plain);
    if (!fs_is_dir(p->tokenizer_dir))
        return alloy_fail(err, "%s: tokenizer_source '%s': directory not found", p->rc.path, ts);
    return 0;
}

/* Whether two directory paths name the same directory. */
static bool same_dir(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb)) return !strcmp(a, b);
    return !strcmp(ra, rb);
}

/* `out: lora` (see plan.h): check the inputs, mark the targeted tensors,
 * pick their delta base and the output rank. */
static int setup_lora_output(merge_plan *p, alloy_err *err) {
    const recipe *r = &p->rc;
    p->out_lora = true;
    if (r->nslices)
        return alloy_fail(err, "%s:%d: out: lora needs the 'models:' form (slices are not supported)", r->path,
                          r->line_out);
    if (p->base < 0)
        return alloy_fail(err, "%s:%d: out: lora needs a base_model (the adapter holds merged - base)", r->path,
                          r->line_out);
    const plan_model *b = &p->models[p->base];
    if (b->has_lora)
        return alloy_fail(err, "%s: out: lora needs a plain base_model, not '%s' with an adapter", r->path, b->ref);
    int sum_rank = 0, first = -1;
    for (int i = 0; i < p->nmodels; i++) {
        const plan_model *m = &p->models[i];
        if (i == p->base) continue;
        if (!same_dir(m->path, b->path))
            return alloy_fail(err, "%s: out: lora: model '%s' is not base_model+ADAPTER (its checkpoint %s is not "
                              "the base %s)", r->path, m->ref, m->path, b->path);
        if (!m->has_lora) continue;
        sum_rank += m->lora.rank;
        if (first < 0) {
            first = i;
            continue;
        }
        /* Same module sets: each of the two has every module of the other. */
        const peft_adapter *a0 = &p->models[first].lora, *a1 = &m->lora;
        for (int pass = 0; pass < 2; pass++) {
            const peft_adapter *x = pass ? a1 : a0, *y = pass ? a0 : a1;
            for (int j = 0; j < x->nmodules; j++)
                if (!peft_find(y, x->modules[j].weight_name))
                    return alloy_fail(err, "%s: out: lora: adapters %s and %s target different modules ('%s' is "
                                      "only in %s); every adapter must target the same modules", r->path,
                                      a0->dir, a1->dir, x->modules[j].weight_name, x->dir);
        }
    }
    if (first < 0)
        return alloy_fail(err, "%s:%d: out: lora but no model is base_model+ADAPTER", r->path, r->line_out);
    for (int i = 0; i < p->nmodels; i++)
        if (i != p->base && !p->models[i].has_lora)
            return alloy_fail(err, "%s: out: lora: model '%s' has no adapter (every model but the base must be "
                              "base_model+ADAPTER)", r->path, p->models[i].ref);
    int64_t cap = 0;
    for (int t = 0; t < p->ntensors; t++) {
        plan_tensor *pt = &p->tensors[t];
        bool hit = pt->copy.lora != NULL;
        for (int j = 0; j < pt->k && !hit; j++) hit = pt->inputs[j].lora != NULL;
        if (!hit) continue;
        if (!pt->merge || pt->ndim != 2)
            return alloy_fail(err, "%s: out: lora: adapted tensor '%s' is not a 2-D float matrix", r->path, pt->name);
        pt->lora_target = true;
        pt->delta_base = (plan_input){.model = p->base, .t = st_find(&b->st, pt->name), .lora = NULL};
        if (!pt->delta_base.t)
            return alloy_fail(err, "%s: out: lora: base_model %s has no tensor '%s'", r->path, b->path, pt->name);
        int64_t mn = pt->shape[0] < pt->shape[1] ? pt->shape[0] : pt->shape[1];
        if (mn > cap) cap = mn;
        p->nlora_targets++;
    }
    if (!p->nlora_targets)
        return alloy_fail(err, "%s: out: lora: no merged tensor is targeted by an input adapter", r->path);
    p->out_rank = r->out_rank ? r->out_rank : (int)(sum_rank < cap ? sum_rank : cap);
    return 0;
}

int plan_build(merge_plan *p, const char *recipe_path, alloy_err *err) {
    memset(p, 0, sizeof *p);
    p->base = -1;
    nslice *ns = NULL;
    int nns = 0;
    if (recipe_load(&p->rc, recipe_path, err)) goto fail;
    p->recipe_dir = fs_dirname(recipe_path);
    p->method = merge_method_find(p->rc.merge_method);
    if (!p->method) {
        const char *hint = merge_method_suggest(p->rc.merge_method);
        if (hint)
            alloy_fail(err, "%s:%d: unknown merge_method '%s' (did you mean '%s'?)", recipe_path, p->rc.line_method,
                       p->rc.merge_method, hint);
        else
            alloy_fail(err, "%s:%d: unknown merge_method '%s'", recipe_path, p->rc.line_method, p->rc.merge_method);
        goto fail;
    }
    alloy_dtype dummy;
    if (p->rc.dtype && dtype_parse_torch(p->rc.dtype, &dummy)) {
        alloy_fail(err, "%s: unknown dtype '%s' (use bfloat16, float16 or float32)", recipe_path, p->rc.dtype);
        goto fail;
    }
    if (p->rc.out_dtype && dtype_parse_torch(p->rc.out_dtype, &dummy)) {
        alloy_fail(err, "%s: unknown out_dtype '%s' (use bfloat16, float16 or float32)", recipe_path,
                   p->rc.out_dtype);
        goto fail;
    }
    if (p->rc.base_model) {
        p->base = model_index(p, p->rc.base_model, 1, err);
        if (p->base < 0) goto fail;
    }
    if (normalise(p, &ns, &nns, err)) goto fail;
    for (int s = 0; s < nns; s++)
        if (check_counts(p, &ns[s], err)) goto fail;
    if (add_outer_tensors(p, &ns[0], true, err)) goto fail;
    for (int s = 0; s < nns; s++)
        if (add_slice_layers(p, &ns[s], err)) goto fail;
    if (add_outer_tensors(p, &ns[nns - 1], false, err)) goto fail;
    if (p->ntensors == 0) {
        alloy_fail(err, "%s: the merge produces no tensors", recipe_path);
        goto fail;
    }
    /* Every LoRA module must land on a tensor that is merged. */
    for (int m = 0; m < p->nmodels; m++)
        for (int i = 0; p->models[m].has_lora && i < p->models[m].lora.nmodules; i++) {
            const peft_module *mod = &p->models[m].lora.modules[i];
            bool used = false;
            for (int t = 0; t < p->ntensors && !used; t++) {
                const plan_tensor *pt = &p->tensors[t];
                used = (pt->has_base && pt->base.lora == mod) || pt->copy.lora == mod;
                for (int j = 0; j < pt->k && !used; j++) used = pt->inputs[j].lora == mod;
            }
            if (!used && add_warning(p, "%s: LoRA module '%s' targets a tensor outside the merge (line %d)",
                                     p->models[m].lora_path, mod->weight_name, 0))
                goto fail;
        }
    if (p->rc.out_lora) {
        if (setup_lora_output(p, err)) goto fail;
    } else if (p->rc.line_rank) {
        alloy_fail(err, "%s:%d: rank: is the rank of an out: lora adapter and needs 'out: lora' (drm's joint-rank "
                   "cap goes under parameters:)", recipe_path, p->rc.line_rank);
        goto fail;
    }
    if (check_unused_params(p) || build_config(p, err) || pick_tokenizer(p, err)) goto fail;
    free_nslices(ns, nns);
    return 0;
fail:
    free_nslices(ns, nns);
    plan_free(p);
    return -1;
}

void plan_describe(const merge_plan *p, FILE *out) {
    fprintf(out, "recipe:     %s\nmethod:     %s\n", p->rc.path, p->method->name);
    fprintf(out, "base model: %s\n", p->base >= 0 ? p->models[p->base].path : "(none)");
    for (int i = 0; i < p->nmodels; i++) {
        const plan_model *m = &p->models[i];
        fprintf(out, "model %d:    %s (%d tensors, %d layers%s%s)\n", i, m->path, m->st.ntensors, m->num_layers,
                m->has_lora ? ", LoRA " : "", m->has_lora ? m->lora_path : "");
    }
    uint64_t bytes = 0;
    int merged = 0;
    for (int i = 0; i < p->ntensors; i++) {
        bytes += (uint64_t)p->tensors[i].numel * dtype_size(p->tensors[i].out_dtype);
        merged += p->tensors[i].merge;
    }
    fprintf(out, "output:     %d tensors (%d merged, %d copied), %d layers, %.1f MB\n", p->ntensors, merged,
            p->ntensors - merged, p->out_layers, bytes / 1e6);
    if (p->out_lora)
        fprintf(out, "output:     LoRA adapter of rank %d over %d targeted tensors (merged - base)\n", p->out_rank,
                p->nlora_targets);
    else
        fprintf(out, "tokenizer:  from %s\n", p->tokenizer_dir);
    int shown = 0;
    for (int i = 0; i < p->ntensors && shown < 6; i++) {
        const plan_tensor *pt = &p->tensors[i];
        if (!pt->merge || p->method->nparams == 0) continue;
        shown++;
        fprintf(out, "  %s:", pt->name);
        for (int q = 0; q < p->method->nparams; q++) {
            const merge_param_def *d = &p->method->params[q];
            if (!d->per_model) {
                fprintf(out, " %s=%g", d->name, pt->gparam[q]);
                continue;
            }
            fprintf(out, " %s=[", d->name);
            for (int j = 0; j < pt->k; j++) fprintf(out, "%s%g", j ? "," : "", pt->mparam[j * p->method->nparams + q]);
            fprintf(out, "]");
        }
        fprintf(out, "\n");
    }
    if (shown && p->ntensors > shown) fprintf(out, "  ... (%d more)\n", p->ntensors - shown);
}

void plan_free(merge_plan *p) {
    if (!p) return;
    for (int i = 0; i < p->nmodels; i++) {
        plan_model *m = &p->models[i];
        free(m->ref);
        free(m->path);
        free(m->lora_path);
        st_close(&m->st);
        if (m->has_lora) peft_free(&m->lora);
        cJSON_Delete(m->config);
    }
    free(p->models);
    for (int i = 0; i < p->ntensors; i++) {
        free(p->tensors[i].name);
        free(p->tensors[i].inputs);
        free(p->tensors[i].gparam);
        free(p->tensors[i].mparam);
    }
    free(p->tensors);
    for (int i = 0; i < p->nwarnings; i++) free(p->warnings[i]);
    free(p->warnings);
    free(p->tokenizer_dir);
    free(p->recipe_dir);
    cJSON_Delete(p->out_config);
    recipe_free(&p->rc);
    memset(p, 0, sizeof *p);
    p->base = -1;
}
