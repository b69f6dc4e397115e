"""KFP component: train_job (see README.md)."""
