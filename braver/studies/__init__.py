"""Studies: each a table of runs (hyperparameter search, transfer setups, surgery)."""
