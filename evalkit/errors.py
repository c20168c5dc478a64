"""Errors shared by the engine and the tasks/adapters. Imports nothing from evalkit."""
from __future__ import annotations


class TaskDataError(ValueError):
    """Data that cannot be loaded; the message names the file, record and field."""
