"""KFP component: sdg (see README.md)."""
