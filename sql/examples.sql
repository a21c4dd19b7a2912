-- Example queries over data/results.duckdb (open it with: duckdb -readonly data/results.duckdb).
-- Each query ends with a semicolon.

-- Best explanation of each neuron, best first.
SELECT layer, neuron, explanation, top_and_random_score, random_only_score
FROM neuron_scores
ORDER BY top_and_random_score DESC NULLS LAST;

-- Mean scores per layer, with how many neurons each mean covers and how many it leaves
-- out as undefined.
SELECT layer, scoring_set, round(mean_score, 3) AS mean_score, n_scored, n_undefined, n_many_unsimulated
FROM layer_scores
ORDER BY layer, scoring_set;

-- The excerpts an explanation was written from, as text.
SELECT e.layer, e.neuron, e.explanation, x.excerpt_id, array_to_string(x.tokens, '') AS text
FROM explanations e, unnest(e.excerpt_ids) AS shown(excerpt_id)
JOIN excerpts x USING (excerpt_id)
ORDER BY e.layer, e.neuron, x.excerpt_id;

-- Full provenance of every score.
SELECT * FROM score_lineage ORDER BY layer, neuron, scoring_set;

-- Neurons that never fired on the corpus.
SELECT layer, neuron FROM neuron_stats WHERE frac_firing = 0;
