"""KFP component: mining (see README.md)."""
