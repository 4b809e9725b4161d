/* recipe.h — mergekit YAML merge recipes, parsed with libyaml.
 *
 * Owns the in-memory form of a recipe and mergekit's rules for reading
 * parameter values: a scalar (number or boolean), a list of numbers (a
 * gradient interpolated over a slice's layers), or a list of
 * {filter: substring, value: x} (first match wins; an entry without filter,
 * or with filter "*", matches everything). Precedence: slice source > slice >
 * top level.
 *
 * Parsing checks structure and types only (with file:line in messages);
 * whether models exist, methods are known and parameters fit the method is
 * the planner's job (src/merge/plan.h). */
#ifndef ALLOY_IO_RECIPE_H
#define ALLOY_IO_RECIPE_H

#include <stdbool.h>
#include <stddef.h>

#include "alloy.h"

typedef enum {
    PV_NUMBER,   /* num (booleans are 1/0) */
    PV_GRADIENT, /* list[n]: interpolated over layers */
    PV_FILTERS,  /* filters[n]: conditional values */
} param_kind;

typedef struct param_filter param_filter;

typedef struct param_value {
    param_kind kind;
    double num;
    int n;
    double *list;          /* PV_GRADIENT */
    param_filter *filters; /* PV_FILTERS */
} param_value;

struct param_filter {
    char *filter; /* NULL: matches everything */
    param_value value;
};

typedef struct param_entry {
    char *name;
    param_value value;
    int line; /* 1-based line in the recipe file */
} param_entry;

typedef struct param_set {
    int n;
    param_entry *e;
} param_set;

typedef struct recipe_source {
    char *model;      /* as written: "path" or "path+lora_path" */
    bool has_range;   /* layer_range given */
    int layer_start;  /* [start, end) */
    int layer_end;
    param_set params;
    int line;
} recipe_source;

typedef struct recipe_slice {
    int nsources;
    recipe_source *sources;
    param_set params;
    int line;
} recipe_slice;

typedef struct recipe {
    char *path;   /* file it was read from (for messages) */
    char *text;   /* the YAML text as read (written into outputs) */
    char *merge_method;
    char *base_model;       /* NULL when absent */
    char *dtype;            /* NULL when absent */
    char *out_dtype;        /* NULL when absent */
    char *tokenizer_source; /* NULL, "base", "union" or a model */
    char *chat_template;    /* NULL when absent (kept for the output) */
    /* Exactly one of the two input forms is set. */
    int nmodels;
    recipe_source *models; /* `models:` form (no layer ranges) */
    int nslices;
    recipe_slice *slices; /* `slices:` form */
    param_set params;     /* top-level `parameters:` */
    int line_method;      /* line of merge_method, for messages */
    /* Output mode (alloy's keys, not mergekit's). `out: dense` (the default)
     * writes a checkpoint; `out: lora` writes the merged delta against
     * base_model as a PEFT adapter of rank `rank:` (a top-level integer >= 1;
     * 0 when absent). This `rank:` is the adapter's rank only: drm's
     * joint-rank cap is the separate method parameter `parameters: rank`. */
    bool out_lora;
    int out_rank;
    int line_out, line_rank; /* 0 when the key is absent */
} recipe;

/* Parse the YAML in text (len bytes); name is used in messages
 * ("recipe.yml:12: ..."). On failure *r is left zeroed. */
int recipe_parse(recipe *r, const char *text, size_t len, const char *name, alloy_err *err);

/* Read and parse a file. */
int recipe_load(recipe *r, const char *path, alloy_err *err);

void recipe_free(recipe *r);

/* mergekit's evaluate_setting: the value of v for tensor_name at layer
 * position t in [0, 1]. Returns 1 and sets *out when v yields a value, 0 when
 * it yields none (a filter list with no matching entry). */
int param_eval(const param_value *v, const char *tensor_name, double t, double *out);

/* Look up parameter `name` for one tensor, with mergekit's precedence: the
 * source's own parameters (when source >= 0), then the slice's (when
 * slice >= 0; in the models form a source's parameters are its model's),
 * then the top level. Returns 1 and sets *out when found, 0 when not. */
int recipe_param(const recipe *r, int slice, int source, const char *name,
                 const char *tensor_name, double t, double *out);

/* Find an entry by name in a set; NULL when absent. */
const param_entry *param_find(const param_set *s, const char *name);

#endif
