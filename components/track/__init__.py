"""KFP component: track (see README.md)."""
