/* mixture.h — MoD (Mixture of Distributions, Dang & Ngo, arXiv 2411.00406):
 * several language models that share one tokenizer run in lockstep on the
 * same token stream, and their next-token distributions are mixed at every
 * position.
 *
 * Rules (both over the members' softmax distributions p_i = softmax(z_i)):
 *   arithmetic  p = Σ_i α_i p_i              (the paper's mixture, its Eq. 1)
 *   geometric   p ∝ Π_i p_i^{α_i}            (log-linear pooling, an option)
 * with α_i ≥ 0 normalised to Σ α_i = 1. The output "logits" are log p, so
 * softmax(log p) = p and the sampler / perplexity treat a mixture like any
 * model.
 *
 * Owns: the mixing math (pure functions below, unit-tested), weight
 * validation, and lm_open_mixture (lm_impl.h). Not here: alloy_mixture.json
 * and the shared-tokenizer check (manifest.h), recipes (mod_recipe.h). */
#ifndef ALLOY_MIX_MIXTURE_H
#define ALLOY_MIX_MIXTURE_H

#include <stdbool.h>

#include "alloy.h"

typedef enum mix_rule { MIX_ARITHMETIC = 0, MIX_GEOMETRIC } mix_rule;

/* "arithmetic" / "geometric" -> rule; -1 with err set for anything else. */
int mix_rule_parse(const char *s, mix_rule *out, alloy_err *err);
const char *mix_rule_name(mix_rule r);

/* Check w[0..n) (finite, >= 0, not all zero) and write the normalised
 * weights w / Σw to alpha (may alias w). Errors name the first bad weight;
 * `where` prefixes messages (a file or "--mix-weights"). */
int mix_normalize_weights(const double *w, int n, double *alpha, const char *where, alloy_err *err);

/* log Σ_v exp(z[v]) for z[0..n), computed stably (max subtracted). */
double mix_logsumexp(const float *z, int n);

/* Mix one position. z[i] points at member i's logits (vocab floats);
 * alpha[0..k) are normalised weights (members with alpha 0 are skipped and
 * their z[i] may be NULL). Writes log p to out (vocab floats):
 *   arithmetic: log p[v] = log Σ_i exp(log α_i + z_i[v] - lse(z_i)),
 *               evaluated with the per-token max subtracted, so that
 *               distributions far below float's range still mix exactly;
 *   geometric:  s[v] = Σ_i α_i (z_i[v] - lse(z_i)), log p = s - lse(s).
 * out may alias z[i] of a member. */
void mix_log_probs(const float *const *z, const double *alpha, int k, int vocab, mix_rule rule, float *out);

#endif
