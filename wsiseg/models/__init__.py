"""Model zoo: DHUnet and the six FedDP Table-I baselines, registered by name.

Importing this package registers every family module.
"""

from __future__ import annotations

import importlib

from wsiseg.models._factory import args_for_tiles, create_model
from wsiseg.models._registry import ModelEntry, get_entry, list_models, register_model

__all__ = ["ModelEntry", "args_for_tiles", "create_model", "get_entry", "list_models", "register_model"]

#: Family modules whose ``@register_model`` entry points fill the registry on import.
_FAMILIES = ("dhunet", "fcn", "unet", "deeplabv3", "upernet", "swinunet", "transfuse")


def _register_families() -> None:
    # A family file that is not written yet is skipped; any other import error propagates.
    for family in _FAMILIES:
        module = f"{__name__}.{family}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


_register_families()
