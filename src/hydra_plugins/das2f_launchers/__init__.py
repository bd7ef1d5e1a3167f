"""das2f's Hydra launchers (launchers.py): hydra/launcher=local and hydra/launcher=slurm."""
