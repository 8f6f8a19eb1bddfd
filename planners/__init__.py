"""Planners that act in Breakout through the world model's public API."""
