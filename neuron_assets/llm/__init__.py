"""The OpenAI-compatible LLM layer: cached, checked calls and the local llama.cpp server."""
