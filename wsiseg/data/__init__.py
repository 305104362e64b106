"""Data: torch Datasets over tile manifests, paired augmentations, and slide-level splits and partitions."""

from __future__ import annotations
