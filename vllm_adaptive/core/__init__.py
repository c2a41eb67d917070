"""KV-cache specs and managers the plugin registers with vLLM (mirrors `vllm.v1.core`)."""
