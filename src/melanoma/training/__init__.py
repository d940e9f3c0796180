"""Training: a LightningModule around the plain model, and the `train` command that writes a RUN dir."""
