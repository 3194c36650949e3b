"""bench/bad_input.py: every bad grid file, CLI argument and report input it knows is refused cleanly."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bad_input  # noqa: E402


def test_every_known_bad_input_is_refused_cleanly(tmp_path):
    results = bad_input.run_cases(tmp_path)
    assert all(set(r) >= {"kind", "case", "clean"} and r["kind"] in bad_input.KINDS for r in results)
    counts = {kind: sum(r["kind"] == kind for r in results) for kind in bad_input.KINDS}
    assert counts["grid file"] >= 40 and counts["CLI argument"] >= 10 and counts["report input"] >= 8, counts
    assert len({(r["kind"], r["case"]) for r in results}) == len(results)  # no case twice
    dirty = [f"[{r['kind']}] {r['case']}: {r['detail']}" for r in results if not r["clean"]]
    assert not dirty, "\n".join(dirty)


def test_a_case_that_is_not_refused_is_reported_as_not_clean(tmp_path, monkeypatch):
    # The judge itself: a "bad" file that is in fact valid would reach Ray; here it fails instead.
    monkeypatch.setattr(bad_input, "grid_cases", lambda: [("valid file", bad_input.GOOD, 1, ())])
    monkeypatch.setattr(bad_input, "cli_cases", lambda d: ([("help", ["train", "--help"], ())], d / "x"))
    monkeypatch.setattr(bad_input, "report_cases", lambda d: [])
    results = bad_input.run_cases(tmp_path)
    assert [r["clean"] for r in results] == [False, False]
    assert "would have started Ray" in results[0]["detail"] and "exit status 0" in results[1]["detail"]
    import ray

    assert not ray.is_initialized()
