"""Everything decided before training, nothing trained: sweep files read into members and compiled
groups (`sweep`), parameters, FLOPs and the memory check (`costs`), the compiled chunk's memory and
the evaluation share (`memory`), measured speeds and projected wall time (`calibrate`), and job-array
parts (`parts`). The host loop that trains is `pql_jax.run`."""
