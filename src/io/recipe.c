/* recipe.c — mergekit YAML recipes: parsing (libyaml document API) into the
 * structs of recipe.h, and mergekit's parameter evaluation and precedence.
 *
 * Owns: structure and type checks with "<file>:<line>: ..." messages, the
 * list of accepted keys (and "did you mean" suggestions for typos), numbers
 * and booleans as YAML plain scalars, gradients and filter lists, alloy's
 * output keys `out: dense|lora` and `rank: N` (see recipe.h).
 * Does not own: whether models exist, methods are known or parameters fit a
 * method — that is src/merge/plan.c. */
#include "io/recipe.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "util/err.h"
#include "util/fs.h"

/* ---- freeing ---- */

static void param_value_free(param_value *v) {
    free(v->list);
    if (v->filters)
        for (int i = 0; i < v->n; i++) {
            free(v->filters[i].filter);
            param_value_free(&v->filters[i].value);
        }
    free(v->filters);
    memset(v, 0, sizeof *v);
}

static void param_set_free(param_set *s) {
    for (int i = 0; i < s->n && s->e; i++) {
        free(s->e[i].name);
        param_value_free(&s->e[i].value);
    }
    free(s->e);
    memset(s, 0, sizeof *s);
}

static void source_free(recipe_source *s) {
    free(s->model);
    param_set_free(&s->params);
}

void recipe_free(recipe *r) {
    if (!r) return;
    free(r->path);
    free(r->text);
    free(r->merge_method);
    free(r->base_model);
    free(r->dtype);
    free(r->out_dtype);
    free(r->tokenizer_source);
    free(r->chat_template);
    for (int i = 0; i < r->nmodels && r->models; i++) source_free(&r->models[i]);
    free(r->models);
    for (int s = 0; s < r->nslices && r->slices; s++) {
        recipe_slice *sl = &r->slices[s];
        for (int j = 0; j < sl->nsources && sl->sources; j++) source_free(&sl->sources[j]);
        free(sl->sources);
        param_set_free(&sl->params);
    }
    free(r->slices);
    param_set_free(&r->params);
    memset(r, 0, sizeof *r);
}

/* ---- evaluation ---- */

int param_eval(const param_value *v, const char *tensor_name, double t, double *out) {
    switch (v->kind) {
    case PV_NUMBER:
        *out = v->num;
        return 1;
    case PV_GRADIENT: {
        if (v->n < 1 || !v->list) return 0;
        if (!(t >= 0)) t = 0; /* also NaN */
        if (t > 1) t = 1;
        double scaled = t * (v->n - 1);
        int i0 = (int)scaled;
        if (i0 > v->n - 1) i0 = v->n - 1;
        int i1 = i0 + 1 < v->n - 1 ? i0 + 1 : v->n - 1;
        double frac = scaled - i0;
        *out = (1 - frac) * v->list[i0] + frac * v->list[i1];
        return 1;
    }
    case PV_FILTERS:
        for (int i = 0; i < v->n; i++) {
            const param_filter *f = &v->filters[i];
            if (!f->filter || !strcmp(f->filter, "*") || (tensor_name && strstr(tensor_name, f->filter)))
                return param_eval(&f->value, tensor_name, t, out);
        }
        return 0;
    }
    return 0;
}

const param_entry *param_find(const param_set *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (s->e[i].name && !strcmp(s->e[i].name, name)) return &s->e[i];
    return NULL;
}

/* One precedence level: 1 when the set has `name` and it yields a value. */
static int level(const param_set *s, const char *name, const char *tensor_name, double t, double *out) {
    const param_entry *e = param_find(s, name);
    return e && param_eval(&e->value, tensor_name, t, out);
}

int recipe_param(const recipe *r, int slice, int source, const char *name, const char *tensor_name, double t,
                 double *out) {
    if (slice >= 0) {
        if (slice < r->nslices) {
            const recipe_slice *sl = &r->slices[slice];
            if (source >= 0 && source < sl->nsources && level(&sl->sources[source].params, name, tensor_name, t, out))
                return 1;
            if (level(&sl->params, name, tensor_name, t, out)) return 1;
        }
    } else if (source >= 0 && source < r->nmodels && level(&r->models[source].params, name, tensor_name, t, out)) {
        return 1;
    }
    return level(&r->params, name, tensor_name, t, out);
}

/* ---- parsing helpers ---- */

typedef struct {
    yaml_document_t *doc;
    const char *name; /* file name for messages */
    alloy_err *err;
} ctx;

static int line_of(const yaml_node_t *n) { return (int)n->start_mark.line + 1; }

static yaml_node_t *node_at(ctx *c, yaml_node_item_t id) { return yaml_document_get_node(c->doc, id); }

static const char *sval(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static int fail_at(ctx *c, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_at(ctx *c, int line, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return alloy_fail(c->err, "%s:%d: %s", c->name, line, msg);
}

static const char *kind_name(const yaml_node_t *n) {
    switch (n->type) {
    case YAML_SCALAR_NODE: return "a scalar";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a map";
    default: return "nothing";
    }
}

/* YAML null: an empty plain scalar, "~" or "null". */
static bool is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *s = sval(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* A plain scalar that is a decimal number ("0.5", "1", "1e-3", ".5",
 * "-0.2") or a boolean (true/false, any of three casings) → *out. */
static bool scalar_number(const yaml_node_t *n, double *out) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *s = sval(n);
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        *out = 1;
        return true;
    }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        *out = 0;
        return true;
    }
    /* [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)? */
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    int mant = 0;
    while (*p >= '0' && *p <= '9') p++, mant++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') p++, mant++;
    }
    if (!mant) return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        int ex = 0;
        while (*p >= '0' && *p <= '9') p++, ex++;
        if (!ex) return false;
    }
    if (*p) return false;
    double v = strtod(s, NULL);
    if (!isfinite(v)) return false;
    *out = v;
    return true;
}

/* A plain scalar that is a decimal integer fitting an int. */
static bool scalar_int(const yaml_node_t *n, int *out) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *s = sval(n), *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!*p) return false;
    for (; *p; p++)
        if (*p < '0' || *p > '9') return false;
    errno = 0;
    long v = strtol(s, NULL, 10);
    if (errno || v < INT_MIN || v > INT_MAX) return false;
    *out = (int)v;
    return true;
}

static int levenshtein(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    if (na > 63 || nb > 63) return 99;
    int row[64];
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

/* Error for an unknown key in a map (`where` names the map), with the closest
 * known key when it is at most two edits away. known is NULL-terminated. */
static int unknown_key(ctx *c, const yaml_node_t *key, const char *where, const char *const *known) {
    const char *best = NULL;
    int bestd = 3;
    for (int i = 0; known[i]; i++) {
        int d = levenshtein(sval(key), known[i]);
        if (d < bestd) bestd = d, best = known[i];
    }
    if (best)
        return fail_at(c, line_of(key), "unknown key '%s' in %s (did you mean '%s'?)", sval(key), where, best);
    return fail_at(c, line_of(key), "unknown key '%s' in %s", sval(key), where);
}

/* Check a mapping's keys: all scalars, none repeated. */
static int check_keys(ctx *c, const yaml_node_t *map) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(c, p->key);
        if (!k || k->type != YAML_SCALAR_NODE)
            return fail_at(c, k ? line_of(k) : line_of(map), "map keys must be plain names");
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++)
            if (!strcmp(sval(node_at(c, q->key)), sval(k)))
                return fail_at(c, line_of(k), "duplicate key '%s'", sval(k));
    }
    return 0;
}

/* A scalar's text, malloc'd, into *dst; YAML null leaves *dst NULL. */
static int get_string(ctx *c, const yaml_node_t *v, const char *key, char **dst) {
    if (is_null(v)) return 0;
    if (v->type != YAML_SCALAR_NODE) return fail_at(c, line_of(v), "%s: expected a string, got %s", key, kind_name(v));
    *dst = strdup(sval(v));
    return *dst ? 0 : alloy_fail(c->err, "out of memory");
}

/* ---- parameters ---- */

static int count_items(const yaml_node_t *n) {
    if (n->type == YAML_SEQUENCE_NODE) return (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (n->type == YAML_MAPPING_NODE) return (int)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    return 0;
}

static const char *const filter_keys[] = {"filter", "value", NULL};

static int parse_value(ctx *c, const yaml_node_t *v, const char *pname, bool allow_filters, param_value *out);

/* One {filter: str, value: x} map. */
static int parse_filter(ctx *c, const yaml_node_t *m, const char *pname, param_filter *f) {
    if (check_keys(c, m)) return -1;
    const yaml_node_t *value = NULL;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        if (!strcmp(sval(k), "filter")) {
            if (get_string(c, v, "filter", &f->filter)) return -1;
        } else if (!strcmp(sval(k), "value")) {
            value = v;
        } else {
            char where[256];
            snprintf(where, sizeof where, "a filter of parameter '%s'", pname);
            return unknown_key(c, k, where, filter_keys);
        }
    }
    if (!value) return fail_at(c, line_of(m), "parameter '%s': filter entry has no 'value'", pname);
    return parse_value(c, value, pname, false, &f->value);
}

/* A parameter value: number/boolean, list of numbers, and (when
 * allow_filters) a {filter, value} map or a list of them. */
static int parse_value(ctx *c, const yaml_node_t *v, const char *pname, bool allow_filters, param_value *out) {
    memset(out, 0, sizeof *out);
    if (v->type == YAML_SCALAR_NODE) {
        if (is_null(v)) return fail_at(c, line_of(v), "parameter '%s' has no value", pname);
        if (!scalar_number(v, &out->num))
            return fail_at(c, line_of(v), "parameter '%s': expected a number, got '%s'", pname, sval(v));
        out->kind = PV_NUMBER;
        return 0;
    }
    if (v->type == YAML_MAPPING_NODE) {
        if (!allow_filters)
            return fail_at(c, line_of(v), "parameter '%s': expected a number or a list of numbers, got a map", pname);
        out->kind = PV_FILTERS;
        out->filters = calloc(1, sizeof *out->filters);
        if (!out->filters) return alloy_fail(c->err, "out of memory");
        out->n = 1;
        return parse_filter(c, v, pname, &out->filters[0]);
    }
    if (v->type != YAML_SEQUENCE_NODE) return fail_at(c, line_of(v), "parameter '%s' has no value", pname);
    int n = count_items(v);
    if (n == 0) return fail_at(c, line_of(v), "parameter '%s': empty list", pname);
    const yaml_node_t *first = node_at(c, v->data.sequence.items.start[0]);
    if (first->type == YAML_MAPPING_NODE) {
        if (!allow_filters)
            return fail_at(c, line_of(first), "parameter '%s': a filter's value must be a number or a list of numbers",
                           pname);
        out->kind = PV_FILTERS;
        out->filters = calloc((size_t)n, sizeof *out->filters);
        if (!out->filters) return alloy_fail(c->err, "out of memory");
        out->n = n;
        for (int i = 0; i < n; i++) {
            const yaml_node_t *it = node_at(c, v->data.sequence.items.start[i]);
            if (it->type != YAML_MAPPING_NODE)
                return fail_at(c, line_of(it), "parameter '%s': list mixes {filter, value} maps with %s", pname,
                               kind_name(it));
            if (parse_filter(c, it, pname, &out->filters[i])) return -1;
        }
        return 0;
    }
    out->kind = PV_GRADIENT;
    out->list = calloc((size_t)n, sizeof *out->list);
    if (!out->list) return alloy_fail(c->err, "out of memory");
    out->n = n;
    for (int i = 0; i < n; i++) {
        const yaml_node_t *it = node_at(c, v->data.sequence.items.start[i]);
        if (it->type != YAML_SCALAR_NODE)
            return fail_at(c, line_of(it), "parameter '%s': gradient entries must be numbers, got %s", pname,
                           kind_name(it));
        if (!scalar_number(it, &out->list[i]))
            return fail_at(c, line_of(it), "parameter '%s': gradient entry '%s' is not a number", pname, sval(it));
    }
    return 0;
}

/* A `parameters:` map (null = empty). */
static int parse_params(ctx *c, const yaml_node_t *m, param_set *s) {
    if (is_null(m)) return 0;
    if (m->type != YAML_MAPPING_NODE)
        return fail_at(c, line_of(m), "parameters: expected a map of name: value, got %s", kind_name(m));
    if (check_keys(c, m)) return -1;
    int n = count_items(m);
    if (!n) return 0;
    s->e = calloc((size_t)n, sizeof *s->e);
    if (!s->e) return alloy_fail(c->err, "out of memory");
    s->n = n;
    for (int i = 0; i < n; i++) {
        yaml_node_pair_t *p = &m->data.mapping.pairs.start[i];
        const yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        s->e[i].line = line_of(k);
        s->e[i].name = strdup(sval(k));
        if (!s->e[i].name) return alloy_fail(c->err, "out of memory");
        if (parse_value(c, v, sval(k), true, &s->e[i].value)) return -1;
    }
    return 0;
}

/* ---- models and slices ---- */

static const char *const model_keys[] = {"model", "parameters", NULL};
static const char *const source_keys[] = {"model", "layer_range", "parameters", NULL};
static const char *const slice_keys[] = {"sources", "parameters", NULL};

static int parse_range(ctx *c, const yaml_node_t *v, recipe_source *s) {
    int a = 0, b = 0;
    if (v->type != YAML_SEQUENCE_NODE || count_items(v) != 2 ||
        !scalar_int(node_at(c, v->data.sequence.items.start[0]), &a) ||
        !scalar_int(node_at(c, v->data.sequence.items.start[1]), &b))
        return fail_at(c, line_of(v), "layer_range: expected two integers [start, end]");
    if (a < 0 || a >= b)
        return fail_at(c, line_of(v), "layer_range [%d, %d]: need 0 <= start < end", a, b);
    s->has_range = true;
    s->layer_start = a;
    s->layer_end = b;
    return 0;
}

/* A `- model: ...` entry of `models:` (slice = false) or of a slice's
 * `sources:` (slice = true, layer_range allowed). */
static int parse_source(ctx *c, const yaml_node_t *m, bool slice, recipe_source *s) {
    const char *list = slice ? "sources" : "models";
    s->line = line_of(m);
    if (m->type == YAML_SCALAR_NODE && !is_null(m))
        return fail_at(c, line_of(m), "%s: entries must be maps like '- model: %s' (got the plain string '%s')", list,
                       sval(m), sval(m));
    if (m->type != YAML_MAPPING_NODE)
        return fail_at(c, line_of(m), "%s: entries must be maps like '- model: path', got %s", list, kind_name(m));
    if (check_keys(c, m)) return -1;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        const char *key = sval(k);
        if (!strcmp(key, "model")) {
            if (v->type != YAML_SCALAR_NODE || is_null(v) || !*sval(v))
                return fail_at(c, line_of(v), "model: expected a model path or name");
            s->model = strdup(sval(v));
            if (!s->model) return alloy_fail(c->err, "out of memory");
        } else if (!strcmp(key, "parameters")) {
            if (parse_params(c, v, &s->params)) return -1;
        } else if (slice && !strcmp(key, "layer_range")) {
            if (parse_range(c, v, s)) return -1;
        } else {
            return unknown_key(c, k, slice ? "a slice source" : "a model entry", slice ? source_keys : model_keys);
        }
    }
    if (!s->model) return fail_at(c, line_of(m), "%s: entry has no 'model'", list);
    return 0;
}

static int parse_models(ctx *c, const yaml_node_t *v, recipe *r) {
    if (v->type != YAML_SEQUENCE_NODE) return fail_at(c, line_of(v), "models: expected a list, got %s", kind_name(v));
    int n = count_items(v);
    if (!n) return fail_at(c, line_of(v), "models: empty list");
    r->models = calloc((size_t)n, sizeof *r->models);
    if (!r->models) return alloy_fail(c->err, "out of memory");
    r->nmodels = n;
    for (int i = 0; i < n; i++)
        if (parse_source(c, node_at(c, v->data.sequence.items.start[i]), false, &r->models[i])) return -1;
    return 0;
}

static int parse_slice(ctx *c, const yaml_node_t *m, recipe_slice *sl) {
    sl->line = line_of(m);
    if (m->type != YAML_MAPPING_NODE)
        return fail_at(c, line_of(m), "slices: entries must be maps with 'sources:', got %s", kind_name(m));
    if (check_keys(c, m)) return -1;
    const yaml_node_t *sources = NULL;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        const char *key = sval(k);
        if (!strcmp(key, "sources")) {
            sources = v;
        } else if (!strcmp(key, "parameters")) {
            if (parse_params(c, v, &sl->params)) return -1;
        } else if (!strcmp(key, "base_model") || !strcmp(key, "residual_weight")) {
            return fail_at(c, line_of(k), "%s: not supported in a slice", key);
        } else {
            return unknown_key(c, k, "a slice", slice_keys);
        }
    }
    if (!sources) return fail_at(c, line_of(m), "slice has no 'sources'");
    if (sources->type != YAML_SEQUENCE_NODE)
        return fail_at(c, line_of(sources), "sources: expected a list, got %s", kind_name(sources));
    int n = count_items(sources);
    if (!n) return fail_at(c, line_of(sources), "sources: empty list");
    sl->sources = calloc((size_t)n, sizeof *sl->sources);
    if (!sl->sources) return alloy_fail(c->err, "out of memory");
    sl->nsources = n;
    for (int j = 0; j < n; j++)
        if (parse_source(c, node_at(c, sources->data.sequence.items.start[j]), true, &sl->sources[j])) return -1;
    return 0;
}

static int parse_slices(ctx *c, const yaml_node_t *v, recipe *r) {
    if (v->type != YAML_SEQUENCE_NODE) return fail_at(c, line_of(v), "slices: expected a list, got %s", kind_name(v));
    int n = count_items(v);
    if (!n) return fail_at(c, line_of(v), "slices: empty list");
    r->slices = calloc((size_t)n, sizeof *r->slices);
    if (!r->slices) return alloy_fail(c->err, "out of memory");
    r->nslices = n;
    for (int s = 0; s < n; s++)
        if (parse_slice(c, node_at(c, v->data.sequence.items.start[s]), &r->slices[s])) return -1;
    return 0;
}

/* ---- top level ---- */

/* Keys offered as suggestions for typos at the top level. */
static const char *const top_keys[] = {"merge_method", "base_model", "models",        "slices",
                                       "parameters",   "dtype",      "out_dtype",     "tokenizer_source",
                                       "chat_template", "name",      "out",           "rank",
                                       NULL};

/* `out: dense | lora`. */
static int parse_out(ctx *c, const yaml_node_t *v, recipe *r) {
    r->line_out = line_of(v);
    if (v->type != YAML_SCALAR_NODE || is_null(v))
        return fail_at(c, line_of(v), "out: expected 'dense' or 'lora', got %s", kind_name(v));
    if (!strcmp(sval(v), "lora")) r->out_lora = true;
    else if (strcmp(sval(v), "dense"))
        return fail_at(c, line_of(v), "out: expected 'dense' or 'lora', got '%s'", sval(v));
    return 0;
}

/* `rank: N`, the rank of an `out: lora` adapter. */
static int parse_rank(ctx *c, const yaml_node_t *v, recipe *r) {
    r->line_rank = line_of(v);
    int n = 0;
    if (v->type != YAML_SCALAR_NODE || !scalar_int(v, &n) || n < 1)
        return fail_at(c, line_of(v), "rank: expected a positive integer (the out: lora adapter rank), got %s%s%s",
                       v->type == YAML_SCALAR_NODE ? "'" : "", v->type == YAML_SCALAR_NODE ? sval(v) : kind_name(v),
                       v->type == YAML_SCALAR_NODE ? "'" : "");
    r->out_rank = n;
    return 0;
}

static int parse_top(ctx *c, const yaml_node_t *root, recipe *r) {
    if (root->type != YAML_MAPPING_NODE)
        return fail_at(c, line_of(root), "the recipe must be a map of keys (merge_method, models, ...), got %s",
                       kind_name(root));
    if (check_keys(c, root)) return -1;
    const yaml_node_t *models = NULL, *slices = NULL, *method = NULL, *slices_key = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        const char *key = sval(k);
        int rc = 0;
        if (!strcmp(key, "merge_method")) method = v;
        else if (!strcmp(key, "models")) models = is_null(v) ? NULL : v;
        else if (!strcmp(key, "slices")) slices = is_null(v) ? NULL : v, slices_key = k;
        else if (!strcmp(key, "base_model")) rc = get_string(c, v, key, &r->base_model);
        else if (!strcmp(key, "dtype")) rc = get_string(c, v, key, &r->dtype);
        else if (!strcmp(key, "out_dtype")) rc = get_string(c, v, key, &r->out_dtype);
        else if (!strcmp(key, "tokenizer_source")) rc = get_string(c, v, key, &r->tokenizer_source);
        else if (!strcmp(key, "chat_template")) rc = get_string(c, v, key, &r->chat_template);
        else if (!strcmp(key, "parameters")) rc = parse_params(c, v, &r->params);
        else if (!strcmp(key, "out")) rc = parse_out(c, v, r);
        else if (!strcmp(key, "rank")) rc = parse_rank(c, v, r);
        else if (!strcmp(key, "name")) continue; /* mergekit's label: ignored */
        else if (!strcmp(key, "tokenizer"))
            return fail_at(c, line_of(k), "tokenizer: not supported (use tokenizer_source)");
        else if (!strcmp(key, "modules")) return fail_at(c, line_of(k), "modules: not supported");
        else return unknown_key(c, k, "the recipe", top_keys);
        if (rc) return -1;
    }
    if (!method) return fail_at(c, line_of(root), "missing merge_method");
    if (method->type != YAML_SCALAR_NODE || is_null(method) || !*sval(method))
        return fail_at(c, line_of(method), "merge_method: expected a method name");
    r->line_method = line_of(method);
    r->merge_method = strdup(sval(method));
    if (!r->merge_method) return alloy_fail(c->err, "out of memory");
    if (models && slices)
        return fail_at(c, line_of(slices_key), "give either 'models:' or 'slices:', not both");
    if (!models && !slices) return fail_at(c, line_of(root), "the recipe needs 'models:' or 'slices:'");
    return models ? parse_models(c, models, r) : parse_slices(c, slices, r);
}

static int syntax_error(const yaml_parser_t *ps, const char *name, alloy_err *err) {
    const char *problem = ps->problem ? ps->problem : "YAML error";
    int line = (int)ps->problem_mark.line + 1;
    if (ps->error == YAML_MEMORY_ERROR) return alloy_fail(err, "%s: out of memory reading YAML", name);
    if (ps->context)
        return alloy_fail(err, "%s:%d: YAML syntax error: %s (%s at line %d)", name, line, problem, ps->context,
                          (int)ps->context_mark.line + 1);
    return alloy_fail(err, "%s:%d: YAML syntax error: %s", name, line, problem);
}

static int parse_into(recipe *r, const char *text, size_t len, const char *name, alloy_err *err) {
    r->path = strdup(name);
    r->text = malloc(len + 1);
    if (!r->path || !r->text) return alloy_fail(err, "out of memory");
    if (len) memcpy(r->text, text, len);
    r->text[len] = 0;

    yaml_parser_t ps;
    if (!yaml_parser_initialize(&ps)) return alloy_fail(err, "out of memory");
    yaml_parser_set_input_string(&ps, (const unsigned char *)r->text, len);
    yaml_document_t doc;
    if (!yaml_parser_load(&ps, &doc)) { /* libyaml frees doc on failure */
        syntax_error(&ps, name, err);
        yaml_parser_delete(&ps);
        return -1;
    }
    int rc = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        rc = alloy_fail(err, "%s: empty recipe (expected merge_method, models or slices, ...)", name);
    } else {
        ctx c = {&doc, name, err};
        rc = parse_top(&c, root, r);
    }
    if (!rc) { /* a second document would be silently ignored: refuse it */
        yaml_document_t more;
        if (!yaml_parser_load(&ps, &more)) {
            rc = syntax_error(&ps, name, err);
        } else {
            yaml_node_t *m = yaml_document_get_root_node(&more);
            if (m) rc = alloy_fail(err, "%s:%d: more than one YAML document", name, line_of(m));
            yaml_document_delete(&more);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&ps);
    return rc;
}

int recipe_parse(recipe *r, const char *text, size_t len, const char *name, alloy_err *err) {
    memset(r, 0, sizeof *r);
    if (!name) name = "<recipe>";
    if (!text) len = 0;
    if (parse_into(r, text, len, name, err)) {
        recipe_free(r);
        return -1;
    }
    return 0;
}

int recipe_load(recipe *r, const char *path, alloy_err *err) {
    memset(r, 0, sizeof *r);
    size_t len = 0;
    char *text = fs_read_file(path, &len, err);
    if (!text) return -1;
    int rc = recipe_parse(r, text, len, path, err);
    free(text);
    return rc;
}
