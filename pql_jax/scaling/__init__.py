"""Scaling laws for value-based RL: learning curves -> crossings -> fitted laws -> budgets -> proposals."""
