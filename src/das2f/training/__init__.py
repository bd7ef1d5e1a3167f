"""The network trained and tested: the LightningModule, its callbacks, loggers and results."""
