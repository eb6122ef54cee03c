"""A small Marian-style English -> French translation model trained here on generated parallel data.

- ``models.mt.data``: ``make_splits(train_size, test_size)`` (num2words numbers, years, dates,
  amounts; held-out sources never in training), ``read_tsv`` / ``write_tsv``.
- ``models.mt.tokenizer``: ``train_tokenizer`` (sentencepiece unigram, shared), ``Tokenizer``.
- ``models.mt.model``: ``MarianMT`` (torch; pre-LN, tied embeddings, decoder with past keys/values).
- ``models.mt.export``: ``export_onnx(model, dir)`` -> encoder.onnx + decoder.onnx (with past).
- ``models.mt.decode``: ``OnnxTranslator`` (greedy, beam, cache-free reference) on onnxruntime.
- ``models.mt.train``: ``build()`` the cached model directory (`make mt-model`), ``evaluate``.
"""
