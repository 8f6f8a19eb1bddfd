"""Experiments compose envs, world model, planners and agents; run.py calls one function here per command."""
