"""The tuner: an optuna study per GPU, kernel, implementation, dtype and shape bucket; the
fastest verified config of each goes to the winners store (:mod:`cache`).

Modules: :mod:`~autotune.space` (what is tuned), :mod:`~autotune.search` (one study),
:mod:`~autotune.evaluate` (checking and timing one candidate), :mod:`~autotune.worker` (crash
isolation), :mod:`~autotune.run` (the whole run), :mod:`~autotune.plot`, :mod:`~autotune.cli`.
This package imports nothing heavy itself: worker processes import it before CUDA starts.
"""
