"""Pretraining: the LightningModule, data module, callbacks, checkpoint IO, export and the hydra app."""
