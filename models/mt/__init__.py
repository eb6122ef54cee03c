"""A small Marian-style translation model trained here on generated parallel data (numbers as words)."""
