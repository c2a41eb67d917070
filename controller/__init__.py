"""The adaptive controller: an OpenAI-compatible proxy with a category-aware semantic cache."""
