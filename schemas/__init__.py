"""Versioned JSON Schema files of the tracking calls (data; generated from ``events``)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
