"""Reports: tables, plots and claims that put reproduced numbers beside the published ones."""
