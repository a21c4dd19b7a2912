"""Stage 4: activations simulated from an explanation by the simulator LLM (method.md §4).

The simulator reads only an explanation and predicts, token by token, how strongly the
neuron fires; from its probabilities of the strings "0".."10" each token gets an expected
activation in [0, 10] (or, without log-probabilities, the integer it writes).

- ``expected_value``: the maths, from a next-token distribution to an expected value.
- ``modes``: one module per way of asking (``all_at_once``, ``one_at_a_time``,
  ``chat_logprobs``, ``json_array``), each behind ``modes.base.SimulatorMode``: its prompt,
  how it reads a reply, which readings of "10" (``TenHandling``) it allows.
- ``probes``: what the backend supports (``auto``) and how its tokenizer writes "10".
- ``neurons``: the per-neuron loop that simulates every explanation on its excerpts.
"""
