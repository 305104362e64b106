"""Model zoo: DHUnet and the six FedDP Table-I baselines, registered by name.

Importing this package registers every family module.
"""

from __future__ import annotations

from wsiseg.models._factory import create_model
from wsiseg.models._registry import ModelEntry, get_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
