"""Stage 4: activations simulated from an explanation by the simulator LLM (method.md §4).

Simulators (method.md §4): predicted activations for an excerpt from an explanation.

- ``all_at_once`` (default): one completions call per excerpt. The prompt lists the
  excerpt with ``unknown`` in place of every activation; the server echoes the prompt
  with log-probabilities, and at each ``unknown`` position the probabilities of the
  strings "0".."10" give an expected activation in [0, 10].
- ``one_at_a_time``: the study's other format, one chat call per token: the text up to
  and including the token, the token named again, and one number asked for; the
  expected value is read from the first generated token's ``top_logprobs``. A different
  prompt from ``all_at_once``, so the two can disagree; ``make bench-modes`` measures by
  how much. It works on any chat model with ``top_logprobs`` (OpenAI's included), at a
  call per token.
- ``chat_logprobs``: for chat backends that give log-probabilities of generated tokens
  only (current OpenAI chat models, at most 20 per position): one chat call per excerpt
  in which the model writes the excerpt again as ``token<TAB>activation`` lines; the
  expected value at each token is read from the distribution of the generated token
  after its tab. The written lines are aligned with the excerpt's tokens; merged, split,
  missing or extra lines leave their tokens unsimulated and are counted as misaligned.
- ``json``: the log-prob-free simulator for backends without log-probabilities; one chat
  call per excerpt returns a JSON array of integers, used as they are. A reply whose
  length differs from the excerpt's is aligned position by position, and the tokens it
  leaves without a value (or the extra values) are counted as misaligned, never
  zero-filled.

``auto`` picks the first of all_at_once, chat_logprobs, json that the backend supports,
found with one tiny probe request per endpoint (cached like every other request).

**The value 10.** Many tokenizers (SmolLM2's, Qwen's, Mistral's, Gemma's) have no token
"10": the model writes "1" then "0", and reading the probability of "1" as the value 1
loses every 10. ``probe_ten_handling`` asks the simulator's own tokenizer, through the
server, how it writes "10", and every simulation stores the answer in ``ten_handling``:

- ``single_token``: "10" is one token (OpenAI's tokenizers); its probability is read.
- ``top_nine`` (all_at_once on a tokenizer that splits "10"): the prompt's scale runs
  from 0 to 9, so every value is one token and the one echoed forward pass still reads
  them all; the expected value is mapped back onto 0..10 (x 10/9). Reading what follows
  each "1" instead costs a call per token: SmolLM2 puts a median 31% of its digit mass on
  "1", so nearly every token would need one.
- ``second_read`` (the chat modes on such a tokenizer): the distribution of the token
  generated after a written "1" gives P("0" | "1"), and that share of the "1" mass moves
  to 10 (where the model wrote another digit, the "1" mass stays 1).
- ``written``: json mode reads numbers written out, so "10" is 10 already.
"""
