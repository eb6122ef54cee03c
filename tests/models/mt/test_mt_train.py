"""The MT build: batches cover every pair once per epoch, the calibration inputs match the ONNX
signatures, the build's metadata holds its measured figures, bad arguments exit 2."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from models.mt.train import _batches, main


def test_batches_cover_every_pair_once_within_the_token_budget():
    rng = random.Random(0)
    pairs = [([1] * rng.randrange(1, 30), [2] * rng.randrange(1, 30)) for _ in range(500)]
    batches = _batches(pairs, 400, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        longest = max(max(len(pairs[i][0]), len(pairs[i][1])) + 2 for i in b)
        assert len(b) == 1 or longest * len(b) <= 400


def test_calibration_inputs_match_the_models(tiny_mt):
    import onnx

    for part in ("encoder", "decoder"):
        model = onnx.load(tiny_mt / f"{part}.onnx", load_external_data=False)
        data = np.load(tiny_mt / f"calib_{part}.npz")
        assert sorted(data.files) == sorted(i.name for i in model.graph.input)
        assert len({data[k].shape[0] for k in data.files}) == 1
    dec = np.load(tiny_mt / "calib_decoder.npz")
    assert dec["past_key.0"].shape[2] == 1  # after the BOS step
    assert np.abs(dec["cross_key.0"]).max() > 0


def test_meta_holds_measured_figures(tiny_mt):
    meta = json.loads((tiny_mt / "meta.json").read_text())
    assert meta["training"]["steps"] > 0 and meta["parameters"] > 0
    for key in ("bleu", "chrf", "tokens_per_s", "latency_ms"):
        assert meta["fp32_greedy"][key] >= 0


@pytest.mark.parametrize("args", [["--steps", "0"], ["--seconds", "-1"], ["--threads", "0"], ["--bogus"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip()
