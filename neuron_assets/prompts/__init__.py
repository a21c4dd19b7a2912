"""Prompt text shared by the LLM stages: normalization, explainer and simulator prompts, worked examples."""
