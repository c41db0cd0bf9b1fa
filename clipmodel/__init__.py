"""The exported model: a folder that plain open_clip loads, and its MLflow pyfunc.

Imports torch, open_clip, safetensors and Pillow only (no Ray, nothing else of the project), so
that MLflow can ship this package with a logged model (``code_paths``) and load it wherever
open_clip runs. ``clipmodel.folder`` writes and reads the folder; ``clipmodel.pyfunc`` wraps it
for MLflow.
"""
