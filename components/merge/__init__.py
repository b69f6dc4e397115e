"""KFP component: merge (see README.md)."""
