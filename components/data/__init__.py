"""KFP component: data (see README.md)."""
