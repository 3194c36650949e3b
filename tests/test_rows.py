"""A trial's epoch log (epochs.jsonl): a torn last line is a crash's trace, any other bad line an error.

Without Ray: the log's format lives in aalr_ray.results.
"""

import json
import os
import stat

import pytest

from aalr_ray.results import RowsError, read_rows, write_rows

ROWS = [{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.2}, {"epoch": 3, "lr": 0.4}]


def lines_of(rows) -> list[str]:
    return [json.dumps(row) for row in rows]


def test_rows_round_trip(tmp_path):
    path = tmp_path / "epochs.jsonl"
    write_rows(path, ROWS)
    assert read_rows(path) == ROWS
    assert read_rows(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize("newline_at_end", [True, False])
def test_a_torn_last_line_is_dropped(tmp_path, newline_at_end):
    """A process killed mid-append leaves part of its row (with or without a newline after it)."""
    path = tmp_path / "epochs.jsonl"
    torn = json.dumps(ROWS[2])[:12]
    path.write_text("\n".join(lines_of(ROWS[:2]) + [torn]) + ("\n" if newline_at_end else ""))
    assert read_rows(path) == ROWS[:2]


@pytest.mark.parametrize("bad, number", [("{not json", 2), ("", 2), ("[1, 2]", 2), ("[1, 2]", 3)])
def test_a_bad_line_before_the_last_is_one_line_naming_the_file_and_line(tmp_path, bad, number):
    """A damaged line is no crash's trace: the rows after it must not vanish silently."""
    path = tmp_path / "epochs.jsonl"
    lines = lines_of(ROWS)
    lines.insert(number - 1, bad)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RowsError) as raised:
        read_rows(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and f"line {number} of 4" in message


def test_a_row_that_is_not_an_object_is_an_error_even_last(tmp_path):
    """Only a torn line is forgiven: whole JSON that is not a row is not the trace of a crash."""
    path = tmp_path / "epochs.jsonl"
    path.write_text("\n".join(lines_of(ROWS) + ["7"]) + "\n")
    with pytest.raises(RowsError, match="line 4 of 4 is not a JSON object"):
        read_rows(path)


def test_a_failed_write_keeps_the_old_log_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "epochs.jsonl"
    write_rows(path, ROWS[:1])
    with pytest.raises(TypeError):
        write_rows(path, [*ROWS, {"epoch": 4, "lr": object()}])  # not JSON: fails mid-write
    assert read_rows(path) == ROWS[:1]
    assert os.listdir(tmp_path) == ["epochs.jsonl"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
    """Not mkstemp's 0600: results are often read by others (a shared results directory)."""
    path = tmp_path / "epochs.jsonl"
    write_rows(path, ROWS)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_trials_row_names_every_node_that_trained_it_once():
    """A trial retried on another node, its data-parallel rows naming both ranks' nodes."""
    from aalr_ray.results import trial_summary

    row = {"test_acc": 0.5, "train_loss": 1.0, "lr": 0.1, "epoch_s": 1.0, "eval_s": 0.1}
    rows = [{**row, "epoch": 1, "node": "a,b", "node_ip": "10.0.0.1,10.0.0.2"},
            {**row, "epoch": 2, "node": "a,c", "node_ip": "10.0.0.1,10.0.0.3"}]
    summary = trial_summary({"epochs": 2}, rows, "TERMINATED", None)
    assert (summary["node"], summary["node_ip"]) == ("a,b,c", "10.0.0.1,10.0.0.2,10.0.0.3")
    assert "node" not in trial_summary({"epochs": 2}, [row | {"epoch": 1}], "UNFINISHED", None)
