"""Hydra plugin shipped with gdlab: plugin packages' config folders on gdlab's search path."""
