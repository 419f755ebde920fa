"""Data sources (bundled faces, image folders) and task plans."""

from .base import DataBundle, ImageDataset
from .plan import Task, TaskPlan, default_class_order, make_plan, parse_tasks, select_per_class
from .sources import load_data

__all__ = [
    "DataBundle",
    "ImageDataset",
    "Task",
    "TaskPlan",
    "default_class_order",
    "load_data",
    "make_plan",
    "parse_tasks",
    "select_per_class",
]
