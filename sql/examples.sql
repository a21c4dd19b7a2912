-- Example queries over data/results.duckdb (open it with: duckdb -readonly data/results.duckdb).
-- Each query ends with a semicolon. Rows name their subject_model, and rows of the LLM
-- stages their variant: filter on them when several are stored.

-- Best explanation of each neuron, best first.
SELECT subject_model, variant, layer, neuron, explanation, top_and_random_score, random_only_score
FROM neuron_scores
ORDER BY top_and_random_score DESC NULLS LAST;

-- Mean scores per layer and method, with how many neurons each mean covers and how many
-- it leaves out as undefined.
SELECT subject_model, variant, layer, method, scoring_set, round(mean_score, 3) AS mean_score, n_scored,
    n_undefined, n_many_unsimulated
FROM layer_scores
ORDER BY subject_model, variant, layer, method, scoring_set;

-- Does the explanation beat the baselines and the control? Per layer, with 95% bootstrap
-- intervals over neurons.
SELECT layer, method, n_neurons, round(mean_score, 3) AS mean_score,
    round(explanation_minus_method, 3) AS explanation_minus_method,
    round(difference_ci_low, 3) AS ci_low, round(difference_ci_high, 3) AS ci_high, verdict
FROM layer_methods
WHERE scoring_set = 'top_and_random'
ORDER BY layer, method;

-- Context-dependent neurons: where the explanation beats every token baseline.
SELECT layer, neuron, explanation, top_and_random_score, best_baseline, best_baseline_score
FROM neuron_scores
WHERE beats_best_baseline
ORDER BY top_and_random_score - best_baseline_score DESC;

-- One neuron, every method side by side.
SELECT method, sample, explanation_neuron, explanation, top_and_random_score, random_only_score,
    top_and_random_explained_variance
FROM method_scores
WHERE layer = 0
ORDER BY neuron, method, sample;

-- The excerpts an explanation was written from, as text.
SELECT e.subject_model, e.variant, e.layer, e.neuron, e.explanation, x.excerpt_id,
    array_to_string(x.tokens, '') AS text
FROM explanations e, unnest(e.excerpt_ids) AS shown(excerpt_id)
JOIN excerpts x ON x.subject_model = e.subject_model AND x.excerpt_id = shown.excerpt_id
ORDER BY e.subject_model, e.variant, e.layer, e.neuron, x.excerpt_id;

-- Full provenance of every score.
SELECT * FROM score_lineage ORDER BY layer, neuron, scoring_set;

-- Neurons that never fired on the corpus.
SELECT layer, neuron FROM neuron_stats WHERE frac_firing = 0;

-- Token vs next-token explanation per neuron (method.md §7; run explanations and simulations
-- with 'next_token_explanation' among their methods first).
SELECT layer, neuron, explanation, round(top_and_random_score, 3) AS token_score,
    round(next_token_explanation_score, 3) AS next_token_score, next_token_scores_higher
FROM neuron_scores
WHERE next_token_explanation_score IS NOT NULL
ORDER BY layer, neuron;

-- Puzzle scorer test per simulator (make puzzles): how often the true explanation won.
SELECT * FROM puzzle_scorer_summary;

-- Revision per layer: revised minus original, with its interval and the false-positive rate.
SELECT layer, scoring_set, revision_kind, n_paired, n_improved, round(revised_minus_original, 3) AS difference,
    round(difference_ci_low, 3) AS ci_low, round(difference_ci_high, 3) AS ci_high, verdict,
    round(false_positive_rate, 2) AS false_positive_rate
FROM revision_layers
ORDER BY layer, scoring_set, revision_kind;

-- What each variant's scores ran with: one row per settings string (more than one: mixed_settings).
SELECT subject_model, variant, layers, n_neurons, overridden_settings, mixed_settings, run_settings
FROM variant_settings
WHERE stage = 'scores'
ORDER BY subject_model, variant, layers;

-- Two variants of one layer side by side (NEURON_ASSETS_VARIANTS=default,other): per layer and
-- method, the mean score of each, b minus a and its 95% bootstrap interval over neurons
-- (verdict 'mixed settings' where a variant's scores ran with more than one configuration).
SELECT subject_model, layer, method, variant_a, variant_b, n_paired, round(mean_score_a, 3) AS mean_a,
    round(mean_score_b, 3) AS mean_b, round(b_minus_a, 3) AS b_minus_a,
    round(difference_ci_low, 3) AS ci_low, round(difference_ci_high, 3) AS ci_high, verdict
FROM variant_layers
WHERE scoring_set = 'top_and_random'
ORDER BY subject_model, layer, method;

-- ... and per neuron: where the variants' explanations differ most.
SELECT layer, neuron, variant_a, explanation_a, top_and_random_score_a, variant_b, explanation_b,
    top_and_random_score_b, round(top_and_random_b_minus_a, 3) AS b_minus_a
FROM variant_scores
WHERE method = 'explanation'
ORDER BY abs(top_and_random_b_minus_a) DESC NULLS LAST;
