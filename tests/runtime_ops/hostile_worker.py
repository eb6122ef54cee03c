"""Runs hostile cases in a child process (a crash or a memory bomb must not take the test runner
with it): each case with the native library and with the function fallback only, recording the
verdict, the output and the peak resident memory the case added.

    python hostile_worker.py cases.pkl results.pkl progress.txt [address_space_limit_bytes]

progress.txt gets the name of each case before it runs, so a crash names its case."""

from __future__ import annotations

import pickle
import resource
import sys


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:   # "5" resets VmHWM to the current RSS
        f.write("5")


def run_one(ort, ops, model: bytes, feed: dict, use_library: bool):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    if use_library:
        ops.register(so)
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        y = sess.run(None, feed)[0]
    except Exception as exc:   # noqa: BLE001 - onnxruntime's errors are the refusals
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        return "refuse", str(exc).splitlines()[0][:2000]
    return "accept", y


def main(argv) -> None:
    cases_path, results_path, progress_path = argv[1:4]
    if len(argv) > 4:   # a memory bomb then fails its allocation instead of exhausting the machine
        limit = int(argv[4])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import onnxruntime as ort

    from qcompiler import ops

    with open(cases_path, "rb") as f:
        cases = pickle.load(f)
    results = []
    with open(progress_path, "w") as progress:
        for name, model, feed in cases:
            row = {"name": name}
            for mode, use_library in (("library", True), ("fallback", False)):
                progress.write(f"{name} [{mode}]\n")
                progress.flush()
                base = _rss_kb("VmRSS")
                _reset_peak()
                verdict, value = run_one(ort, ops, model, feed, use_library)
                row[mode] = (verdict, value)
                row[mode + "_peak_kb"] = max(0, _rss_kb("VmHWM") - base)
            results.append(row)
    with open(results_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(sys.argv)
