-- Derived views over the per-table views (documents, excerpts, activation_records,
-- neuron_stats, explanations, simulations, scores) that neuron_assets creates in
-- results.duckdb. Each statement ends with a semicolon; comments start with "--".

-- One row per scored simulation set: what the simulator saw and which models ran.
CREATE OR REPLACE VIEW simulation_sets AS
SELECT
    layer, neuron, sample,
    any_value(simulator_model) AS simulator_model,
    any_value(simulation_mode) AS simulation_mode,
    any_value(prompt_version) AS simulator_prompt_version,
    any_value(run_id) AS simulation_run_id,
    list(excerpt_id ORDER BY excerpt_kind DESC, excerpt_id) AS scoring_excerpt_ids,
    sum(n_unsimulated) AS n_unsimulated,
    sum(n_misaligned) AS n_misaligned,
    sum(prompt_tokens) AS prompt_tokens,
    -- null unless some prompt lost few-shot examples to fit the simulator's context
    max(prompt_shortening) AS prompt_shortening
FROM simulations
GROUP BY layer, neuron, sample;

-- Every explanation sample with both of its scores.
CREATE OR REPLACE VIEW explanation_scores AS
SELECT
    st.subject_model, st.corpus,
    e.layer, e.neuron, e.sample, e.explanation,
    e.explainer_model, s.simulator_model,
    tr.correlation AS top_and_random_score,
    ro.correlation AS random_only_score,
    tr.explained_variance AS top_and_random_explained_variance,
    ro.explained_variance AS random_only_explained_variance,
    tr.undefined_reason AS top_and_random_undefined_reason,
    ro.undefined_reason AS random_only_undefined_reason,
    -- share of the scored tokens that got no simulated value (scored as 0, as in the study)
    tr.n_unsimulated / nullif(tr.n_tokens, 0) AS top_and_random_unsimulated_share,
    ro.n_unsimulated / nullif(ro.n_tokens, 0) AS random_only_unsimulated_share,
    -- true when more than 5% of either set's tokens were unsimulated: read that score with care
    coalesce(tr.n_unsimulated > 0.05 * tr.n_tokens, false)
        OR coalesce(ro.n_unsimulated > 0.05 * ro.n_tokens, false) AS many_unsimulated
FROM explanations e
JOIN neuron_stats st USING (layer, neuron)
LEFT JOIN simulation_sets s USING (layer, neuron, sample)
LEFT JOIN scores tr ON tr.layer = e.layer AND tr.neuron = e.neuron AND tr.sample = e.sample
    AND tr.scoring_set = 'top_and_random'
LEFT JOIN scores ro ON ro.layer = e.layer AND ro.neuron = e.neuron AND ro.sample = e.sample
    AND ro.scoring_set = 'random_only';

-- The best scored explanation of each neuron (by top-and-random score; undefined scores
-- last). Only explanations that have been scored are listed: a NULL score here is
-- undefined (constant activations), and *_undefined_reason says why. Explanations a run
-- has written but not yet scored are in unscored_explanations.
CREATE OR REPLACE VIEW neuron_scores AS
SELECT * EXCLUDE (sample)
FROM explanation_scores
WHERE top_and_random_score IS NOT NULL OR top_and_random_undefined_reason IS NOT NULL
    OR random_only_score IS NOT NULL OR random_only_undefined_reason IS NOT NULL
QUALIFY row_number() OVER (
    PARTITION BY subject_model, layer, neuron
    ORDER BY top_and_random_score DESC NULLS LAST, sample
) = 1;

-- Per layer and scoring set, over each neuron's best scored explanation: the mean score
-- beside how many neurons it averages (n_scored), how many it leaves out because their
-- score is undefined (n_undefined), and how many of the set's scores had more than 5% of
-- their tokens unsimulated (n_many_unsimulated).
CREATE OR REPLACE VIEW layer_scores AS
SELECT subject_model, layer, scoring_set,
    avg(score) AS mean_score,
    count(score) AS n_scored,
    count(*) - count(score) AS n_undefined,
    count(*) FILTER (WHERE unsimulated_share > 0.05) AS n_many_unsimulated
FROM (
    SELECT subject_model, layer, 'top_and_random' AS scoring_set, top_and_random_score AS score,
        top_and_random_unsimulated_share AS unsimulated_share
    FROM neuron_scores
    UNION ALL
    SELECT subject_model, layer, 'random_only', random_only_score, random_only_unsimulated_share
    FROM neuron_scores
)
GROUP BY subject_model, layer, scoring_set;

-- Explanations with no score yet: a run between its explanation and score steps, or a
-- scores partition that failed or was never materialized.
CREATE OR REPLACE VIEW unscored_explanations AS
SELECT layer, neuron, sample, explanation, explainer_model, run_id AS explanation_run_id
FROM explanations e
WHERE NOT EXISTS (
    SELECT 1 FROM scores sc WHERE sc.layer = e.layer AND sc.neuron = e.neuron AND sc.sample = e.sample
);

-- For any score: which explanation, prompts, models, excerpts, subject model, corpus
-- and Dagster runs produced it.
CREATE OR REPLACE VIEW score_lineage AS
SELECT
    sc.layer, sc.neuron, sc.sample, sc.scoring_set, sc.correlation, sc.undefined_reason,
    e.explanation,
    e.prompt_version AS explainer_prompt_version,
    e.explainer_model,
    e.temperature AS explainer_temperature,
    e.excerpt_ids AS explanation_excerpt_ids,
    e.prompt_shortening AS explainer_prompt_shortening,
    s.simulator_model,
    s.simulation_mode,
    s.simulator_prompt_version,
    s.scoring_excerpt_ids,
    s.prompt_shortening AS simulator_prompt_shortening,
    st.subject_model,
    st.corpus,
    st.run_id AS recording_run_id,
    e.run_id AS explanation_run_id,
    s.simulation_run_id,
    sc.run_id AS score_run_id,
    sc.partition
FROM scores sc
JOIN explanations e USING (layer, neuron, sample)
JOIN simulation_sets s USING (layer, neuron, sample)
JOIN neuron_stats st USING (layer, neuron);
