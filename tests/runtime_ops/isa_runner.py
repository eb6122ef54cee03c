"""Runs every case of cases.py through onnxruntime with the native library, in the ISA variant that
QCOMPILER_ISA selects (set by the caller: the variant is chosen once per process), and saves the
outputs to the .npz named on the command line."""

import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qcompiler import ops  # noqa: E402
from cases import all_cases  # noqa: E402


def main(out_path: str) -> None:
    outs = {}
    for case in all_cases():
        so = ort.SessionOptions()
        ops.register(so)
        so.intra_op_num_threads = int(os.environ.get("QC_THREADS", "2"))
        sess = ort.InferenceSession(case.model().SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs[case.name] = sess.run(None, case.feed())[0]
    np.savez(out_path, **outs)


if __name__ == "__main__":
    main(sys.argv[1])
