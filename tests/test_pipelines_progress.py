"""runner.progress: what a person watching a job, or reading its log, sees."""

from __future__ import annotations

import io
import time

from pipelines.machinery import runner


def test_progress_in_a_log_never_goes_back_and_ends_at_the_total():
    values = iter([3, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # markers gone at publication: 0
    log = io.StringIO()
    with runner.progress("shard", lambda: (next(values), "wrote"), total=8, unit="files",
                         every=0.05, stream=log):
        time.sleep(0.4)
    lines = log.getvalue().splitlines()
    counts = [int(line.split("|")[2].split("/")[0]) for line in lines]
    assert counts[:2] == [3, 5] and counts[-1] == 8
    assert counts == sorted(counts)
    assert lines[-1].startswith("shard: 100%") and "8/8" in lines[-1]


def test_a_job_shorter_than_the_interval_prints_nothing_in_a_log_and_a_failed_one_no_total():
    log = io.StringIO()
    with runner.progress("relabel", lambda: (1, ""), total=5, every=10, stream=log):
        pass
    assert log.getvalue() == ""
    log = io.StringIO()
    try:
        with runner.progress("relabel", lambda: (2, ""), total=5, every=0.05, stream=log):
            time.sleep(0.2)
            raise RuntimeError("worker died")
    except RuntimeError:
        pass
    assert log.getvalue() and "5/5" not in log.getvalue()


def test_without_a_probe_a_long_job_still_logs_the_time_elapsed():
    log = io.StringIO()
    with runner.progress("export rlds", None, every=0.05, stream=log):
        time.sleep(0.3)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("export rlds: ") for line in lines)
