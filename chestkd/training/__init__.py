"""Training: configuration, run directories, losses and the fit loop shared by every recipe."""
