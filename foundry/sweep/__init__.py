"""The sweep: mutate -> train -> evaluate -> promote, paired across seeds and resumable.

    runner.py     plan paired trials, run them through an executor, rank, decide, report, promote
    worker.py     one trial in a worker process (train, evaluate, record in the store)
    executors.py  local process pool (default), Ray, submitit
    report.py     ranking, the promotion decision, report.md and PNG plots
    stats.py      paired t-test across seeds (no SciPy)

Command line: python -m foundry.cli.sweep (see its --help).
"""
