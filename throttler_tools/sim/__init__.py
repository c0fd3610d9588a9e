"""Virtual time: the simulation engine, its world, faults and checker (not shipped)."""
