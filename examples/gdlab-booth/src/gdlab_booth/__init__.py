"""An example gdlab plugin: Booth's function as an objective, plus one YAML preset."""
