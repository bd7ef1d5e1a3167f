"""`python -m das2f.predict ckpt_path=... dataset=NAME` (make predict): full-scene classification maps.

The work is in das2f.predictor (imported when the task runs, so `--help` answers at once).
"""
from __future__ import annotations

from omegaconf import DictConfig

from .cli import hydra_entry


@hydra_entry("predict")
def main(cfg: DictConfig) -> None:
    from .predictor import predict

    predict(cfg)


if __name__ == "__main__":
    main()
