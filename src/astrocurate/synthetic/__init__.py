"""A synthetic radio survey with truth labels, for the demo, tests and benchmarks."""
