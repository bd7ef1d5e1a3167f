"""`python -m das2f.predict ckpt_path=... dataset=NAME` (make predict): full-scene classification maps.

The work is in das2f.maps.predictor (imported when the task runs, so `--help` answers at once).
"""
from __future__ import annotations

from omegaconf import DictConfig

from .runtime.cli import hydra_entry


@hydra_entry("predict")
def main(cfg: DictConfig) -> None:
    from .maps.request import check_request

    check_request(cfg)  # a mistake in the request answers before the predictor's imports
    from .maps.predictor import predict

    predict(cfg)


if __name__ == "__main__":
    main()
