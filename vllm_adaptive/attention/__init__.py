"""Attention paths the plugin adds to vLLM's backends (mirrors `vllm.v1.attention`)."""
