-- Derived views over the per-table views (documents, excerpts, activation_records,
-- neuron_stats, token_lookup, scoring_excerpts, explanations, simulations,
-- token_predictions, scores, method_comparisons, ablation_scores, classifier_scores, ...) that neuron_assets creates in
-- results.duckdb. Each statement ends with a semicolon; comments start with "--".
--
-- Scores carry a method: 'explanation' (the explainer's, from top excerpts), the
-- baselines 'lookup_table' and 'weight_based' (token predictions, no LLM) and
-- 'lookup_explanation' (the lookup table summarized into a sentence), and 'control'
-- (another neuron's explanation of the same layer). Every method of a neuron is scored
-- on the same excerpts.
--
-- Every neuron row has a polarity: 'positive' (the activations as recorded) or, where
-- recording asked for it, 'negative' (the negated activations, explained and scored as a
-- neuron of their own). Every join matches on it.
--
-- Every row names its subject_model, and rows of the LLM stages (explanations, simulations,
-- scores, method_comparisons, revision_*) their variant: a named configuration of
-- explainer, simulator, prompts and settings. Results of different models and variants
-- live side by side; every join matches on both, and variant_scores / variant_layers
-- compare variants.
--
-- explained_variance uses a calibration fitted on held-out calibration excerpts, so it
-- is not the correlation squared: it can be lower, and it is negative when the
-- calibrated simulation is further from the truth than the truth's own mean.

-- The fewest neurons a layer's verdict reads an interval over. Below it every verdict
-- (layer_methods, revision_layers, variant_layers) says 'too few neurons': a percentile
-- bootstrap of a mean over n values has few distinct resamples (10 for n = 3) and its
-- interval says little. Raise it for stricter verdicts.
CREATE OR REPLACE VIEW verdict_rules AS
SELECT 10 AS min_neurons;

-- One row per simulated explanation: what the simulator saw and which models ran.
CREATE OR REPLACE VIEW simulation_sets AS
SELECT
    subject_model, variant, layer, neuron, polarity, sample, method,
    any_value(explanation_neuron) AS explanation_neuron,
    any_value(simulator_model) AS simulator_model,
    any_value(simulation_mode) AS simulation_mode,
    any_value(prompt_version) AS simulator_prompt_version,
    any_value(run_id) AS simulation_run_id,
    list(excerpt_id ORDER BY excerpt_kind DESC, excerpt_id) FILTER (WHERE excerpt_kind IN ('top', 'random'))
        AS scoring_excerpt_ids,
    list(excerpt_id ORDER BY excerpt_kind DESC, excerpt_id) FILTER (WHERE excerpt_kind LIKE 'calibration%')
        AS calibration_excerpt_ids,
    sum(n_unsimulated) AS n_unsimulated,
    sum(n_misaligned) AS n_misaligned,
    sum(prompt_tokens) AS prompt_tokens,
    -- null unless some prompt lost few-shot examples to fit the simulator's context
    max(prompt_shortening) AS prompt_shortening
FROM simulations
GROUP BY subject_model, variant, layer, neuron, polarity, sample, method;

-- Every scored method of every neuron, one row per (method, sample), both scoring sets
-- side by side. For 'control', explanation_neuron is the neuron the explanation was
-- written for; token baselines have no explanation.
CREATE OR REPLACE VIEW method_scores AS
SELECT
    tr.subject_model, tr.variant, tr.layer, tr.neuron, tr.polarity, tr.method, tr.sample, tr.explanation_neuron,
    e.explanation,
    tr.correlation AS top_and_random_score,
    ro.correlation AS random_only_score,
    tr.explained_variance AS top_and_random_explained_variance,
    ro.explained_variance AS random_only_explained_variance,
    tr.calibration_slope, tr.calibration_intercept, tr.n_calibration_tokens,
    tr.undefined_reason AS top_and_random_undefined_reason,
    ro.undefined_reason AS random_only_undefined_reason,
    -- share of the scored tokens that got no simulated value (scored as 0, as in the study)
    tr.n_unsimulated / nullif(tr.n_tokens, 0) AS top_and_random_unsimulated_share,
    ro.n_unsimulated / nullif(ro.n_tokens, 0) AS random_only_unsimulated_share,
    -- true when more than 5% of either set's tokens were unsimulated: read that score with care
    coalesce(tr.n_unsimulated > 0.05 * tr.n_tokens, false)
        OR coalesce(ro.n_unsimulated > 0.05 * ro.n_tokens, false) AS many_unsimulated,
    -- the settings the score's explanation and simulation ran with (null for token baselines)
    tr.run_settings
FROM scores tr
JOIN scores ro ON ro.subject_model = tr.subject_model AND ro.variant = tr.variant AND ro.layer = tr.layer
    AND ro.neuron = tr.neuron AND ro.polarity = tr.polarity
    AND ro.sample = tr.sample AND ro.method = tr.method AND ro.scoring_set = 'random_only'
LEFT JOIN explanations e ON e.subject_model = tr.subject_model AND e.variant = tr.variant AND e.layer = tr.layer
    AND e.neuron = tr.explanation_neuron AND e.polarity = tr.polarity
    AND e.sample = (CASE WHEN tr.method = 'control' THEN 0 ELSE tr.sample END)
    AND e.method = (CASE WHEN tr.method = 'control' THEN 'explanation' ELSE tr.method END)
WHERE tr.scoring_set = 'top_and_random';

-- Every explanation sample (method 'explanation') with both of its scores.
CREATE OR REPLACE VIEW explanation_scores AS
SELECT
    st.subject_model, e.variant, st.corpus,
    e.layer, e.neuron, e.polarity, e.sample, e.explanation,
    e.explainer_model, s.simulator_model,
    m.top_and_random_score, m.random_only_score,
    m.top_and_random_explained_variance, m.random_only_explained_variance,
    m.top_and_random_undefined_reason, m.random_only_undefined_reason,
    m.top_and_random_unsimulated_share, m.random_only_unsimulated_share,
    coalesce(m.many_unsimulated, false) AS many_unsimulated
FROM explanations e
JOIN neuron_stats st USING (subject_model, layer, neuron, polarity)
LEFT JOIN simulation_sets s USING (subject_model, variant, layer, neuron, polarity, sample, method)
LEFT JOIN method_scores m USING (subject_model, variant, layer, neuron, polarity, sample, method)
WHERE e.method = 'explanation';

-- Each scored neuron's explanation beside its baselines and control, all top-and-random.
-- One rule everywhere (here, layer_scores, method_comparisons, variant_scores): a
-- neuron's score for a method is the mean of its samples' defined scores, so a neuron
-- with several explanation samples is not favoured over its single control or baseline.
-- explanation / best_sample / best_sample_score show the best-scoring sample's text, for
-- reading only; n_samples says how many samples the mean covers. A NULL score is
-- undefined in every sample (constant activations), and *_undefined_reason says why.
-- Explanations not yet scored are in unscored_explanations. beats_best_baseline /
-- beats_control: the explanation's mean scored higher than the best baseline / than
-- another neuron's explanation on this neuron (one neuron, no interval: see layer_methods
-- for the layer's verdict). next_token_scores_higher: the next-token explanation (when
-- simulations asked for it) beat the token explanation on this neuron.
CREATE OR REPLACE VIEW neuron_scores AS
WITH scored AS (
    SELECT *
    FROM explanation_scores
    WHERE top_and_random_score IS NOT NULL OR top_and_random_undefined_reason IS NOT NULL
        OR random_only_score IS NOT NULL OR random_only_undefined_reason IS NOT NULL
),
best AS (
    SELECT subject_model, variant, corpus, layer, neuron, polarity, explanation, explainer_model, simulator_model,
        sample AS best_sample, top_and_random_score AS best_sample_score
    FROM scored
    QUALIFY row_number() OVER (
        PARTITION BY subject_model, variant, layer, neuron, polarity
        ORDER BY top_and_random_score DESC NULLS LAST, sample
    ) = 1
),
means AS (
    SELECT subject_model, variant, layer, neuron, polarity,
        count(*) AS n_samples,
        avg(top_and_random_score) AS top_and_random_score,
        avg(random_only_score) AS random_only_score,
        avg(top_and_random_explained_variance) AS top_and_random_explained_variance,
        avg(random_only_explained_variance) AS random_only_explained_variance,
        CASE WHEN count(top_and_random_score) = 0 THEN any_value(top_and_random_undefined_reason) END
            AS top_and_random_undefined_reason,
        CASE WHEN count(random_only_score) = 0 THEN any_value(random_only_undefined_reason) END
            AS random_only_undefined_reason,
        max(top_and_random_unsimulated_share) AS top_and_random_unsimulated_share,
        max(random_only_unsimulated_share) AS random_only_unsimulated_share,
        bool_or(many_unsimulated) AS many_unsimulated
    FROM scored
    GROUP BY subject_model, variant, layer, neuron, polarity
),
per_method AS (
    SELECT subject_model, variant, layer, neuron, polarity, method,
        avg(top_and_random_score) AS score, any_value(explanation_neuron) AS explanation_neuron
    FROM method_scores
    GROUP BY subject_model, variant, layer, neuron, polarity, method
),
others AS (
    SELECT subject_model, variant, layer, neuron, polarity,
        any_value(score) FILTER (WHERE method = 'lookup_table') AS lookup_table_score,
        any_value(score) FILTER (WHERE method = 'weight_based') AS weight_based_score,
        any_value(score) FILTER (WHERE method = 'lookup_explanation') AS lookup_explanation_score,
        any_value(score) FILTER (WHERE method = 'next_token_explanation') AS next_token_explanation_score,
        arg_max(method, score)
            FILTER (WHERE method IN ('lookup_table', 'weight_based', 'lookup_explanation')) AS best_baseline,
        max(score) FILTER (WHERE method IN ('lookup_table', 'weight_based', 'lookup_explanation'))
            AS best_baseline_score,
        any_value(score) FILTER (WHERE method = 'control') AS control_score,
        any_value(explanation_neuron) FILTER (WHERE method = 'control') AS control_explanation_neuron
    FROM per_method
    GROUP BY subject_model, variant, layer, neuron, polarity
)
SELECT b.subject_model, b.variant, b.corpus, b.layer, b.neuron, b.polarity,
    b.explanation, b.explainer_model, b.simulator_model, b.best_sample, b.best_sample_score,
    m.* EXCLUDE (subject_model, variant, layer, neuron, polarity),
    o.* EXCLUDE (subject_model, variant, layer, neuron, polarity),
    m.top_and_random_score > o.best_baseline_score AS beats_best_baseline,
    m.top_and_random_score > o.control_score AS beats_control,
    o.next_token_explanation_score > m.top_and_random_score AS next_token_scores_higher
FROM best b
JOIN means m USING (subject_model, variant, layer, neuron, polarity)
LEFT JOIN others o USING (subject_model, variant, layer, neuron, polarity);

-- Per layer, method and scoring set: the mean score over neurons (a neuron's samples
-- averaged first) beside how many neurons it averages (n_scored), how many it leaves out
-- because their score is undefined (n_undefined), and how many had more than 5% of their
-- tokens unsimulated (n_many_unsimulated).
CREATE OR REPLACE VIEW layer_scores AS
WITH per_neuron AS (
    SELECT subject_model, variant, layer, neuron, polarity, method, scoring_set,
        avg(score) AS score, max(unsimulated_share) AS unsimulated_share
    FROM (
        SELECT subject_model, variant, layer, neuron, polarity, method, 'top_and_random' AS scoring_set,
            top_and_random_score AS score, top_and_random_unsimulated_share AS unsimulated_share
        FROM method_scores
        UNION ALL
        SELECT subject_model, variant, layer, neuron, polarity, method, 'random_only',
            random_only_score, random_only_unsimulated_share
        FROM method_scores
    )
    GROUP BY subject_model, variant, layer, neuron, polarity, method, scoring_set
)
SELECT subject_model, variant, layer, polarity, method, scoring_set,
    avg(score) AS mean_score,
    count(score) AS n_scored,
    count(*) - count(score) AS n_undefined,
    count(*) FILTER (WHERE unsimulated_share > 0.05) AS n_many_unsimulated
FROM per_neuron
GROUP BY subject_model, variant, layer, polarity, method, scoring_set;

-- Per layer and scoring set, each method against the explanation, with 95% bootstrap
-- intervals over neurons (from method_comparisons). verdict reads the interval of the
-- difference (explanation minus method), over at least verdict_rules.min_neurons paired
-- neurons ('too few neurons' below it): 'explanation better' when it lies above 0,
-- 'explanation worse' when below, 'no clear difference' when it spans 0 (with a tiny
-- explainer, expect that against 'control': it means the explanations carry no more
-- about their own neuron than about another one).
CREATE OR REPLACE VIEW layer_methods AS
SELECT subject_model, variant, layer, polarity, scoring_set, method, n_neurons,
    mean_score, mean_ci_low, mean_ci_high,
    n_paired, explanation_minus_method, difference_ci_low, difference_ci_high,
    CASE
        WHEN method = 'explanation' THEN NULL
        WHEN difference_ci_low IS NULL OR n_paired < (SELECT min_neurons FROM verdict_rules) THEN 'too few neurons'
        WHEN difference_ci_low > 0 THEN 'explanation better'
        WHEN difference_ci_high < 0 THEN 'explanation worse'
        ELSE 'no clear difference'
    END AS verdict
FROM method_comparisons;

-- Explanations with no score yet: a run between its explanation and score steps, or a
-- scores partition that failed or was never materialized.
CREATE OR REPLACE VIEW unscored_explanations AS
SELECT subject_model, variant, layer, neuron, polarity, sample, method, explanation, explainer_model,
    run_id AS explanation_run_id
FROM explanations e
WHERE NOT EXISTS (
    SELECT 1 FROM scores sc
    WHERE sc.subject_model = e.subject_model AND sc.variant = e.variant
        AND sc.layer = e.layer AND sc.neuron = e.neuron AND sc.polarity = e.polarity AND sc.sample = e.sample
        AND sc.method = e.method
);

-- For any score: which method, explanation, prompts, models, excerpts, subject model,
-- corpus and Dagster runs produced it (explanation and simulator columns are null for
-- token baselines, which use neither).
CREATE OR REPLACE VIEW score_lineage AS
SELECT
    sc.subject_model, sc.variant,
    sc.layer, sc.neuron, sc.polarity, sc.sample, sc.method, sc.explanation_neuron, sc.scoring_set,
    sc.correlation, sc.explained_variance, sc.calibration_slope, sc.calibration_intercept,
    sc.undefined_reason,
    e.explanation,
    e.prompt_version AS explainer_prompt_version,
    e.explainer_model,
    e.temperature AS explainer_temperature,
    e.excerpt_ids AS explanation_excerpt_ids,
    e.prompt_shortening AS explainer_prompt_shortening,
    s.simulator_model,
    s.simulation_mode,
    s.simulator_prompt_version,
    x.scoring_excerpt_ids,
    x.calibration_excerpt_ids,
    s.prompt_shortening AS simulator_prompt_shortening,
    st.corpus,
    st.run_id AS recording_run_id,
    e.run_id AS explanation_run_id,
    s.simulation_run_id,
    sc.run_id AS score_run_id,
    sc.partition
FROM scores sc
JOIN neuron_stats st USING (subject_model, layer, neuron, polarity)
JOIN (
    SELECT subject_model, layer, neuron, polarity,
        list(excerpt_id ORDER BY excerpt_kind DESC, excerpt_id) FILTER (WHERE excerpt_kind IN ('top', 'random'))
            AS scoring_excerpt_ids,
        list(excerpt_id ORDER BY excerpt_kind DESC, excerpt_id) FILTER (WHERE excerpt_kind LIKE 'calibration%')
            AS calibration_excerpt_ids
    FROM scoring_excerpts
    GROUP BY subject_model, layer, neuron, polarity
) x USING (subject_model, layer, neuron, polarity)
LEFT JOIN simulation_sets s USING (subject_model, variant, layer, neuron, polarity, sample, method)
LEFT JOIN explanations e ON e.subject_model = sc.subject_model AND e.variant = sc.variant AND e.layer = sc.layer
    AND e.neuron = sc.explanation_neuron AND e.polarity = sc.polarity
    AND e.sample = (CASE WHEN sc.method = 'control' THEN 0 ELSE sc.sample END)
    AND e.method = (CASE WHEN sc.method = 'control' THEN 'explanation' ELSE sc.method END);

-- The puzzle scorer test (method.md §10), per puzzle file, scorer and model: how often the true
-- explanation ranked first and in the top two, against what picking at random would give, and
-- the mean metric (correlation for simulation, balanced accuracy for detection and fuzzing, AUROC
-- for surprisal) of the true and of the other candidates. The classifier scorers borrow silent
-- sentences of other puzzles where a puzzle has too few (puzzle_scores metadata says the rule):
-- those are assumed silent for the borrowing puzzle.
CREATE OR REPLACE VIEW puzzle_scorer_summary AS
SELECT
    puzzle_file,
    scorer,
    simulator_model,
    simulation_mode,
    count(*) FILTER (WHERE candidate_kind = 'true') AS n_puzzles,
    count(*) FILTER (WHERE candidate_kind = 'true' AND rank = 1) AS top_1,
    count(*) FILTER (WHERE candidate_kind = 'true' AND rank <= 2) AS top_2,
    round(sum(1.0 / n_candidates) FILTER (WHERE candidate_kind = 'true'), 2) AS chance_top_1,
    round(sum(least(2, n_candidates) * 1.0 / n_candidates) FILTER (WHERE candidate_kind = 'true'), 2) AS chance_top_2,
    avg(coalesce(metric, correlation)) FILTER (WHERE candidate_kind = 'true') AS mean_true_score,
    avg(coalesce(metric, correlation)) FILTER (WHERE candidate_kind <> 'true') AS mean_other_score
FROM puzzle_scores
GROUP BY ALL;

-- The puzzle explainer test: per puzzle, the explainer's explanation beside the true one, and
-- whether it scored at least as well as the true one / better than every false one.
CREATE OR REPLACE VIEW puzzle_explainer_results AS
SELECT
    puzzle_file,
    puzzle,
    true_explanation,
    explanation,
    correlation,
    true_correlation,
    best_false_correlation,
    coalesce(correlation >= true_correlation, false) AS matches_true_score,
    coalesce(correlation > best_false_correlation, false) AS beats_false_explanations,
    explainer_model,
    simulator_model,
    simulation_mode
FROM puzzle_explanations;

-- Revision (method.md §8), per neuron: the original explanation and its revision side by side
-- on the original and the extended scoring set, with the false positives among the sentences.
CREATE OR REPLACE VIEW revision_neurons AS
SELECT
    o.subject_model,
    o.variant,
    o.layer,
    o.neuron,
    o.polarity,
    o.explanation AS original_explanation,
    r.revision_kind,
    r.explanation AS revised_explanation,
    o.correlation AS original_score,
    r.correlation AS revised_score,
    r.correlation - o.correlation AS revised_minus_original,
    oe.correlation AS original_extended_score,
    re.correlation AS revised_extended_score,
    re.correlation - oe.correlation AS extended_revised_minus_original,
    fp.n_sentences,
    fp.n_false_positives,
    fp.n_rejected
FROM revision_scores o
JOIN revision_scores r ON r.subject_model = o.subject_model AND r.variant = o.variant AND r.layer = o.layer AND r.neuron = o.neuron AND r.polarity = o.polarity
    AND r.sample = o.sample AND r.scoring_set = 'original' AND r.revision_kind <> 'original'
JOIN revision_scores oe ON oe.subject_model = o.subject_model AND oe.variant = o.variant AND oe.layer = o.layer AND oe.neuron = o.neuron AND oe.polarity = o.polarity
    AND oe.sample = o.sample AND oe.scoring_set = 'extended' AND oe.revision_kind = 'original'
JOIN revision_scores re ON re.subject_model = o.subject_model AND re.variant = o.variant AND re.layer = o.layer AND re.neuron = o.neuron AND re.polarity = o.polarity
    AND re.sample = o.sample AND re.scoring_set = 'extended' AND re.revision_kind = r.revision_kind
LEFT JOIN (
    SELECT subject_model, variant, layer, neuron, polarity,
        count(*) AS n_sentences,
        count(*) FILTER (WHERE is_false_positive) AS n_false_positives,
        count(*) FILTER (WHERE rejected_reason IS NOT NULL) AS n_rejected
    FROM revision_sentences
    GROUP BY subject_model, variant, layer, neuron, polarity
) fp ON fp.subject_model = o.subject_model AND fp.variant = o.variant AND fp.layer = o.layer AND fp.neuron = o.neuron
    AND fp.polarity = o.polarity
WHERE o.revision_kind = 'original' AND o.scoring_set = 'original';

-- Revision per layer: mean difference revised - original with its bootstrap interval, neurons
-- improved, and the false-positive rate of the generated sentences; verdict as in layer_methods.
CREATE OR REPLACE VIEW revision_layers AS
SELECT
    c.subject_model,
    c.variant,
    c.layer,
    c.polarity,
    c.scoring_set,
    c.revision_kind,
    c.n_paired,
    c.n_improved,
    c.mean_score,
    c.revised_minus_original,
    c.difference_ci_low,
    c.difference_ci_high,
    CASE
        WHEN c.difference_ci_low IS NULL OR c.n_paired < (SELECT min_neurons FROM verdict_rules)
            THEN 'too few neurons'
        WHEN c.difference_ci_low > 0 THEN 'revision better'
        WHEN c.difference_ci_high < 0 THEN 'revision worse'
        ELSE 'no clear difference'
    END AS verdict,
    s.false_positive_rate,
    s.neurons_with_a_false_positive
FROM revision_comparisons c
LEFT JOIN (
    SELECT subject_model, variant, layer, polarity,
        avg(CASE WHEN is_false_positive THEN 1.0 ELSE 0.0 END) FILTER (WHERE rejected_reason IS NULL) AS false_positive_rate,
        count(DISTINCT neuron) FILTER (WHERE is_false_positive) AS neurons_with_a_false_positive
    FROM revision_sentences
    GROUP BY subject_model, variant, layer, polarity
) s USING (subject_model, variant, layer, polarity)
WHERE c.revision_kind <> 'original';

-- What each variant ran with: per subject model, variant and LLM stage (explanations,
-- simulations, scores of the LLM methods), each distinct settings string its rows hold
-- (run_settings: canonical JSON of the run's settings after any run-config override, keyed by
-- stage; a stage's rows carry the settings of the rows they were made from too, so a score's
-- say its explanation's and its simulation's), how many rows, neurons, layers and runs ran
-- with it, and which settings those runs overrode (overridden_settings: 'stage.key' or
-- 'llm.key' differing from the variant's defaults). run_settings is NULL for rows written
-- before settings were recorded. n_settings counts the strings of the variant's stage;
-- mixed_settings is true when there is more than one: the name covers more than one
-- configuration, and variant_scores / variant_layers say so.
CREATE OR REPLACE VIEW variant_settings AS
WITH recorded AS (
    SELECT 'explanations' AS stage, subject_model, variant, layer, neuron, polarity, run_id, run_settings,
        overridden_settings
    FROM explanations
    UNION ALL
    SELECT 'simulations', subject_model, variant, layer, neuron, polarity, run_id, run_settings, overridden_settings
    FROM simulations
    UNION ALL
    SELECT 'scores', subject_model, variant, layer, neuron, polarity, run_id, run_settings, overridden_settings
    FROM scores
    WHERE method NOT IN ('lookup_table', 'weight_based')
)
SELECT subject_model, variant, stage, run_settings,
    list_sort(list_distinct(flatten(list(coalesce(overridden_settings, []::VARCHAR[]))))) AS overridden_settings,
    count(*) AS n_rows,
    count(DISTINCT (layer, neuron, polarity)) AS n_neurons,
    list_sort(list_distinct(list(layer))) AS layers,
    count(DISTINCT run_id) AS n_runs,
    count(*) OVER (PARTITION BY subject_model, variant, stage) AS n_settings,
    count(*) OVER (PARTITION BY subject_model, variant, stage) > 1 AS mixed_settings
FROM recorded
GROUP BY subject_model, variant, stage, run_settings;

-- Variants side by side, per neuron: each method's top-and-random and random-only score (a
-- neuron's samples averaged) under variant_a and variant_b (every pair of variants of the
-- subject model, variant_a < variant_b by name), and b minus a. settings_a / settings_b are
-- the settings the neuron's scores ran with (see variant_settings; null for token baselines);
-- mixed_settings is true when variant_a's or variant_b's scores, over all layers, ran with
-- more than one settings string: the names then do not say which configurations are compared.
CREATE OR REPLACE VIEW variant_scores AS
WITH per_neuron AS (
    SELECT subject_model, variant, layer, neuron, polarity, method,
        avg(top_and_random_score) AS top_and_random_score,
        avg(random_only_score) AS random_only_score,
        any_value(explanation) FILTER (WHERE sample = 0) AS explanation,
        any_value(run_settings) AS run_settings
    FROM method_scores
    GROUP BY ALL
),
mixed AS (
    -- mixed_settings as the settings view gives it for stage 'scores' (rows with no settings count as one)
    SELECT subject_model, variant, count(DISTINCT coalesce(run_settings, '')) > 1 AS mixed_settings
    FROM scores
    WHERE method NOT IN ('lookup_table', 'weight_based')
    GROUP BY subject_model, variant
)
SELECT
    a.subject_model, a.layer, a.neuron, a.polarity, a.method,
    a.variant AS variant_a,
    b.variant AS variant_b,
    a.explanation AS explanation_a,
    b.explanation AS explanation_b,
    a.top_and_random_score AS top_and_random_score_a,
    b.top_and_random_score AS top_and_random_score_b,
    b.top_and_random_score - a.top_and_random_score AS top_and_random_b_minus_a,
    a.random_only_score AS random_only_score_a,
    b.random_only_score AS random_only_score_b,
    b.random_only_score - a.random_only_score AS random_only_b_minus_a,
    a.run_settings AS settings_a,
    b.run_settings AS settings_b,
    coalesce(ma.mixed_settings, false) OR coalesce(mb.mixed_settings, false) AS mixed_settings
FROM per_neuron a
JOIN per_neuron b ON b.subject_model = a.subject_model AND b.layer = a.layer AND b.neuron = a.neuron
    AND b.polarity = a.polarity AND b.method = a.method AND b.variant > a.variant
LEFT JOIN mixed ma ON ma.subject_model = a.subject_model AND ma.variant = a.variant
LEFT JOIN mixed mb ON mb.subject_model = b.subject_model AND mb.variant = b.variant;

-- Variants side by side, per layer, method and scoring set: the mean score under each
-- variant over the neurons both scored (a defined score in both), the mean of b minus a,
-- and its 95% bootstrap interval over those neurons (1,000 resamples drawn by hashing, so
-- the interval is the same at every query). verdict reads the interval, as in layer_methods,
-- except where mixed_settings (see variant_scores): then it is 'mixed settings', and the
-- numbers compare this layer's settings_a and settings_b only, not what the names ran elsewhere.
CREATE OR REPLACE VIEW variant_layers AS
WITH paired AS (
    SELECT subject_model, layer, polarity, method, variant_a, variant_b, scoring_set, score_a, score_b,
        settings_a, settings_b, mixed_settings,
        score_b - score_a AS difference,
        row_number() OVER (PARTITION BY subject_model, layer, polarity, method, variant_a, variant_b, scoring_set
            ORDER BY neuron) - 1 AS slot,
        count(*) OVER (PARTITION BY subject_model, layer, polarity, method, variant_a, variant_b, scoring_set) AS n
    FROM (
        SELECT subject_model, layer, neuron, polarity, method, variant_a, variant_b, 'top_and_random' AS scoring_set,
            top_and_random_score_a AS score_a, top_and_random_score_b AS score_b, settings_a, settings_b, mixed_settings
        FROM variant_scores
        UNION ALL
        SELECT subject_model, layer, neuron, polarity, method, variant_a, variant_b, 'random_only',
            random_only_score_a, random_only_score_b, settings_a, settings_b, mixed_settings
        FROM variant_scores
    )
    WHERE score_a IS NOT NULL AND score_b IS NOT NULL
),
groups AS (
    SELECT subject_model, layer, polarity, method, variant_a, variant_b, scoring_set, any_value(n) AS n,
        avg(score_a) AS mean_score_a, avg(score_b) AS mean_score_b, avg(difference) AS b_minus_a,
        -- one layer's rows of a variant are one run's: one settings string each
        any_value(settings_a) AS settings_a, any_value(settings_b) AS settings_b,
        bool_or(mixed_settings) OR count(DISTINCT settings_a) > 1 OR count(DISTINCT settings_b) > 1 AS mixed_settings
    FROM paired
    GROUP BY ALL
),
draws AS (
    SELECT g.subject_model, g.layer, g.polarity, g.method, g.variant_a, g.variant_b, g.scoring_set, r.resample,
        hash(g.subject_model, g.layer, g.polarity, g.method, g.scoring_set, r.resample, d.draw) % g.n AS slot
    FROM groups g
    CROSS JOIN range(1000) r(resample)
    CROSS JOIN LATERAL (SELECT unnest(range(g.n)) AS draw) d
    WHERE g.n >= 2
),
resampled AS (
    SELECT d.subject_model, d.layer, d.polarity, d.method, d.variant_a, d.variant_b, d.scoring_set,
        avg(p.difference) AS mean_difference
    FROM draws d
    JOIN paired p USING (subject_model, layer, polarity, method, variant_a, variant_b, scoring_set, slot)
    GROUP BY d.subject_model, d.layer, d.polarity, d.method, d.variant_a, d.variant_b, d.scoring_set, d.resample
),
intervals AS (
    SELECT subject_model, layer, polarity, method, variant_a, variant_b, scoring_set,
        quantile_cont(mean_difference, 0.025) AS difference_ci_low,
        quantile_cont(mean_difference, 0.975) AS difference_ci_high
    FROM resampled
    GROUP BY ALL
)
SELECT g.subject_model, g.layer, g.polarity, g.method, g.scoring_set, g.variant_a, g.variant_b,
    g.n AS n_paired, g.mean_score_a, g.mean_score_b, g.b_minus_a,
    i.difference_ci_low, i.difference_ci_high,
    CASE
        WHEN g.mixed_settings THEN 'mixed settings'
        WHEN i.difference_ci_low IS NULL OR g.n < (SELECT min_neurons FROM verdict_rules) THEN 'too few neurons'
        WHEN i.difference_ci_low > 0 THEN 'variant_b better'
        WHEN i.difference_ci_high < 0 THEN 'variant_a better'
        ELSE 'no clear difference'
    END AS verdict,
    g.mixed_settings, g.settings_a, g.settings_b
FROM groups g
LEFT JOIN intervals i USING (subject_model, layer, polarity, method, variant_a, variant_b, scoring_set);

-- The ablation score (method.md §5) beside the correlation score, per neuron: one row per
-- neuron side, method and scoring set, a method's samples averaged (as in neuron_scores).
-- ablation_score is 1 - E[JSD(simulated)] / E[JSD(mean)]: 1 when the calibrated simulation in
-- the neuron's place leaves the next-token distributions as they were, 0 when it does no
-- better than the neuron's mean activation, negative when worse. A NULL score has its reason
-- (no calibration, or a mean ablation that changes nothing).
CREATE OR REPLACE VIEW ablation_neurons AS
SELECT a.subject_model, a.variant, a.layer, a.neuron, a.polarity, a.method, a.scoring_set,
    count(*) AS n_samples,
    avg(s.correlation) AS correlation,
    avg(a.ablation_score) AS ablation_score,
    avg(a.mean_jsd_simulated) AS mean_jsd_simulated,
    max(a.mean_jsd_mean) AS mean_jsd_mean,
    max(a.n_tokens) AS n_tokens,
    string_agg(DISTINCT a.undefined_reason, ' | ') AS undefined_reason
FROM ablation_scores a
LEFT JOIN scores s ON s.subject_model = a.subject_model AND s.variant = a.variant AND s.layer = a.layer
    AND s.neuron = a.neuron AND s.polarity = a.polarity AND s.sample = a.sample AND s.method = a.method
    AND s.explanation_neuron IS NOT DISTINCT FROM a.explanation_neuron AND s.scoring_set = a.scoring_set
GROUP BY a.subject_model, a.variant, a.layer, a.neuron, a.polarity, a.method, a.scoring_set;

-- Correlation against ablation per layer, method and scoring set, over the neurons where both
-- are defined (n_neurons; n_undefined leaves out the rest): each mean with a 95% interval
-- (normal approximation, mean +- 1.96 standard errors; NULL under 2 neurons) and the rank
-- (Spearman) correlation of the two scores over neurons. The study found them related on
-- average, yet a correlation of 0.9 went with an ablation score near 0.3 (random-only) and
-- 0.6 (top-and-random): read mean_ablation against mean_correlation, not as the same number.
CREATE OR REPLACE VIEW ablation_layers AS
WITH defined AS (
    SELECT * FROM ablation_neurons WHERE correlation IS NOT NULL AND ablation_score IS NOT NULL
),
ranked AS (
    SELECT *,
        rank() OVER (w ORDER BY correlation)
            + (count(*) OVER (PARTITION BY subject_model, variant, layer, polarity, method, scoring_set, correlation) - 1)
            / 2.0 AS correlation_rank,
        rank() OVER (w ORDER BY ablation_score)
            + (count(*) OVER (PARTITION BY subject_model, variant, layer, polarity, method, scoring_set, ablation_score)
                - 1) / 2.0 AS ablation_rank
    FROM defined
    WINDOW w AS (PARTITION BY subject_model, variant, layer, polarity, method, scoring_set)
),
summary AS (
    SELECT subject_model, variant, layer, polarity, method, scoring_set,
        count(*) AS n_neurons,
        avg(correlation) AS mean_correlation,
        1.96 * stddev_samp(correlation) / sqrt(count(*)) AS correlation_half_width,
        avg(ablation_score) AS mean_ablation,
        1.96 * stddev_samp(ablation_score) / sqrt(count(*)) AS ablation_half_width,
        corr(correlation_rank, ablation_rank) AS rank_correlation
    FROM ranked
    GROUP BY subject_model, variant, layer, polarity, method, scoring_set
),
everything AS (
    SELECT subject_model, variant, layer, polarity, method, scoring_set,
        count(*) FILTER (WHERE correlation IS NULL OR ablation_score IS NULL) AS n_undefined
    FROM ablation_neurons
    GROUP BY subject_model, variant, layer, polarity, method, scoring_set
)
SELECT e.subject_model, e.variant, e.layer, e.polarity, e.method, e.scoring_set,
    coalesce(s.n_neurons, 0) AS n_neurons, e.n_undefined,
    s.mean_correlation,
    s.mean_correlation - s.correlation_half_width AS correlation_ci_low,
    s.mean_correlation + s.correlation_half_width AS correlation_ci_high,
    s.mean_ablation,
    s.mean_ablation - s.ablation_half_width AS ablation_ci_low,
    s.mean_ablation + s.ablation_half_width AS ablation_ci_high,
    s.rank_correlation
FROM everything e
LEFT JOIN summary s USING (subject_model, variant, layer, polarity, method, scoring_set);

-- Explainable directions (method.md §9) per layer: the random starting directions' and the
-- found directions' mean lookup-table score (top and random scoring-pool excerpts of each
-- direction's own virtual neuron), each with a 95% interval (normal approximation, mean +- 1.96
-- standard errors; NULL under 2 directions), how close the found directions lie to one another
-- (mean and largest |cosine|) and how many top-|weight| neurons recover their score (median).
CREATE OR REPLACE VIEW direction_layers AS
SELECT subject_model, variant, layer,
    count(*) AS n_directions,
    avg(start_correlation) AS mean_start,
    avg(start_correlation) - 1.96 * stddev_samp(start_correlation) / sqrt(count(start_correlation)) AS start_ci_low,
    avg(start_correlation) + 1.96 * stddev_samp(start_correlation) / sqrt(count(start_correlation)) AS start_ci_high,
    avg(found_correlation) AS mean_found,
    avg(found_correlation) - 1.96 * stddev_samp(found_correlation) / sqrt(count(found_correlation)) AS found_ci_low,
    avg(found_correlation) + 1.96 * stddev_samp(found_correlation) / sqrt(count(found_correlation)) AS found_ci_high,
    avg(max_abs_cosine) AS mean_max_abs_cosine,
    max(max_abs_cosine) AS largest_abs_cosine,
    median(neurons_to_recover) AS median_neurons_to_recover
FROM direction_summaries
GROUP BY subject_model, variant, layer;

-- The found directions beside the layer's recorded neurons' stored lookup_table scores
-- (top_and_random, every stored side), where both exist: the study's comparison (GPT-2 small
-- layer 10, with GPT-4: 0.718 found vs 0.147 neurons vs 0.061 random starts). The neurons were
-- scored on their own scoring excerpts, the directions on theirs; the asset's metadata also
-- scores a random sample of the layer's neurons the directions' way.
CREATE OR REPLACE VIEW direction_comparison AS
WITH neurons AS (
    SELECT subject_model, variant, layer,
        count(correlation) AS n_neurons,
        avg(correlation) AS mean_neurons,
        1.96 * stddev_samp(correlation) / sqrt(count(correlation)) AS neurons_half_width
    FROM scores
    WHERE method = 'lookup_table' AND scoring_set = 'top_and_random'
    GROUP BY subject_model, variant, layer
)
SELECT d.subject_model, d.variant, d.layer, d.n_directions,
    d.mean_found, d.found_ci_low, d.found_ci_high,
    n.n_neurons, n.mean_neurons,
    n.mean_neurons - n.neurons_half_width AS neurons_ci_low,
    n.mean_neurons + n.neurons_half_width AS neurons_ci_high,
    d.mean_start, d.start_ci_low, d.start_ci_high
FROM direction_layers d
JOIN neurons n USING (subject_model, variant, layer);

-- The classifier scorers (delphi's detection, fuzzing and surprisal), per neuron side and
-- method, a method's samples averaged (as in neuron_scores). detection / fuzzing: balanced
-- accuracy of the written yes/no answers (0.5 is chance) and, where the answers were graded
-- from log-probabilities, the AUROC; surprisal: the AUROC of the likelihood gain the
-- explanation gives activating over non-activating excerpts (0.5 is chance).
-- scorers_beside_simulation adds the same explanation's correlation score where it was simulated.
CREATE OR REPLACE VIEW neuron_scorers AS
SELECT subject_model, variant, layer, neuron, polarity, method,
    avg(balanced_accuracy) FILTER (WHERE scorer = 'detection') AS detection_balanced_accuracy,
    avg(auroc) FILTER (WHERE scorer = 'detection') AS detection_auroc,
    avg(balanced_accuracy) FILTER (WHERE scorer = 'fuzzing') AS fuzzing_balanced_accuracy,
    avg(auroc) FILTER (WHERE scorer = 'fuzzing') AS fuzzing_auroc,
    avg(auroc) FILTER (WHERE scorer = 'surprisal') AS surprisal_auroc,
    avg(mean_gain_activating - mean_gain_non_activating) FILTER (WHERE scorer = 'surprisal')
        AS surprisal_gain_difference,
    max(n_examples) AS n_examples
FROM classifier_scores
GROUP BY subject_model, variant, layer, neuron, polarity, method;

-- Every scorer per layer and method: the mean of its headline metric over neurons (balanced
-- accuracy for detection and fuzzing, AUROC for surprisal; graded_auroc beside it where the
-- answers were graded) with a 95% interval (normal approximation, mean +- 1.96 standard
-- errors; NULL under 2 neurons). Read explanation against control: an explanation that tells
-- its neuron's excerpts apart no better than another neuron's explanation does carries
-- nothing of its own.
CREATE OR REPLACE VIEW scorer_layers AS
WITH per_neuron AS (
    SELECT subject_model, variant, layer, polarity, method, 'detection' AS scorer,
        detection_balanced_accuracy AS metric, detection_auroc AS graded_auroc
    FROM neuron_scorers WHERE detection_balanced_accuracy IS NOT NULL OR detection_auroc IS NOT NULL
    UNION ALL
    SELECT subject_model, variant, layer, polarity, method, 'fuzzing', fuzzing_balanced_accuracy, fuzzing_auroc
    FROM neuron_scorers WHERE fuzzing_balanced_accuracy IS NOT NULL OR fuzzing_auroc IS NOT NULL
    UNION ALL
    SELECT subject_model, variant, layer, polarity, method, 'surprisal', surprisal_auroc, surprisal_auroc
    FROM neuron_scorers WHERE surprisal_auroc IS NOT NULL
)
SELECT subject_model, variant, layer, polarity, method, scorer,
    CASE WHEN scorer = 'surprisal' THEN 'auroc' ELSE 'balanced_accuracy' END AS metric_name,
    count(metric) AS n_neurons,
    avg(metric) AS mean_metric,
    avg(metric) - 1.96 * stddev_samp(metric) / sqrt(count(metric)) AS ci_low,
    avg(metric) + 1.96 * stddev_samp(metric) / sqrt(count(metric)) AS ci_high,
    avg(graded_auroc) AS mean_graded_auroc
FROM per_neuron
GROUP BY subject_model, variant, layer, polarity, method, scorer
ORDER BY subject_model, variant, layer, polarity, scorer, method;

-- neuron_scorers with the same explanation's top-and-random correlation score (simulation_score)
-- where it was simulated too: the scorers side by side, one row per neuron side and method.
CREATE OR REPLACE VIEW scorers_beside_simulation AS
SELECT c.*, s.simulation_score
FROM neuron_scorers c
LEFT JOIN (
    SELECT subject_model, variant, layer, neuron, polarity, method, avg(correlation) AS simulation_score
    FROM scores WHERE scoring_set = 'top_and_random'
    GROUP BY subject_model, variant, layer, neuron, polarity, method
) s USING (subject_model, variant, layer, neuron, polarity, method);
