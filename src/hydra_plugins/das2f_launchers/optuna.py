"""``hparams_search=optuna``: Optuna's Hydra sweeper, continued in place.

Its study lives in the sweep directory (``optuna.db``, SQLite through ``hydra.sweeper.storage``). The same
command with ``hydra.sweep.dir=<the search's directory>`` continues the search: the trials already done (complete,
pruned or failed) count towards ``n_trials``; a trial that a stop left running is asked again with the same
parameters, and das2f's launcher then resumes its job from its last.ckpt (das2f.runtime.sweeps); new trials get job
numbers after the existing ones.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper

log = logging.getLogger("das2f.sweep")


def load(storage: str | None, study_name: str | None):
    """The stored study, or None (no storage, or none of that name yet)."""
    import optuna

    if not storage or (storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file()):
        return None
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no study of that name in the storage yet
        return None


class OptunaSweeper(_OptunaSweeper):
    def __init__(self, *, n_trials: int, storage: str | None, study_name: str | None, **params: Any) -> None:
        from optuna.trial import TrialState

        self.storage, self.study_name = storage, study_name
        study = load(storage, study_name)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))) \
            if study is not None else 0
        if done:
            log.info("continuing the Optuna study %r in %s: %d of %d trial(s) done, %d to go", study_name, storage, done,
                     n_trials, max(0, n_trials - done))
            if hasattr(params.get("sampler"), "reseed_rng"):  # seeded as before, it would ask its first trials again
                params["sampler"].reseed_rng()
        super().__init__(n_trials=max(0, int(n_trials) - done), storage=storage, study_name=study_name, **params)

    def setup(self, **kwargs: Any) -> None:
        """After the launcher has claimed the sweep directory: the trials a stop left running are marked failed and
        asked again with their parameters (their jobs are resumed)."""
        from optuna.trial import TrialState

        super().setup(**kwargs)
        study = load(self.storage, self.study_name)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study is not None else ():
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
            log.info("Optuna trial %d was stopped: asked again with its parameters %s", trial.number, trial.params)
