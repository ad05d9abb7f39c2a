"""pql_jax: fully jitted Parallel Q-Learning, vmapped populations, and scaling-law fits."""

__version__ = "0.1.0"
