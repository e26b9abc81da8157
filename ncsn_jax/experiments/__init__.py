"""Studies around the models: the NCSN toy experiments, NCSNv2 tuning rules."""
