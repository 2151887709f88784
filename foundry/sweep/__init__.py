"""The sweep: mutate -> train -> evaluate -> promote, paired across seeds and resumable.

    plan.py       pure: options, candidates, budgets, halving rungs, seed layout, frozen trial specs
    execute.py    one executor for the whole sweep, polling, progress, resume from the store
    executors.py  local process pool (default), Ray, submitit
    worker.py     one trial in a worker process (train, evaluate, record in the store)
    results.py    what the trials measured: the ranking metric, per-seed samples, per-item gains
    decision.py   the promotion rule: select on screening seeds, confirm the winner alone on fresh seeds
    stats.py      its statistics (SciPy): margin t-test, seed x item crossed test, power, sequential bounds
    search.py     --search tpe (Optuna) over a numeric mutation type
    report.py     report.md, PNG plots, the printed decision
    runner.py     the stages in order: halving, screening, selection, confirmation, report, promotion

Command line: python -m foundry.cli.sweep (see its --help).
"""
