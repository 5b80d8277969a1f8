"""Names to implementations: ``backend="sagemaker"`` imports its module only when used.

Each entry is a dotted path plus the install hint shown when the import fails.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, MissingDependencyError

BACKENDS: dict[str, tuple[str, str]] = {
    "local": ("finetune_sdk.backends.local:LocalBackend", "pip install 'finetune-sdk[train]'"),
    "sagemaker": ("finetune_sdk.backends.sagemaker:SageMakerBackend", "pip install 'finetune-sdk[sagemaker]'"),
}
DEPLOYERS: dict[str, tuple[str, str]] = {
    "inprocess": ("finetune_sdk.deployers.inprocess:InProcessDeployer", "pip install 'finetune-sdk[train]'"),
    "local": ("finetune_sdk.deployers.local:LocalServerDeployer", "pip install 'finetune-sdk[serve]'"),
    "sagemaker": ("finetune_sdk.deployers.sagemaker:SageMakerDeployer", "pip install 'finetune-sdk[sagemaker]'"),
}


def resolve(table: dict[str, tuple[str, str]], name_or_obj: Any, what: str, **kwargs: Any) -> Any:
    """An instance for ``name_or_obj``: a registered name is imported and built; an instance passes through."""
    if not isinstance(name_or_obj, str):
        return name_or_obj
    if name_or_obj not in table:
        raise ConfigError(f"unknown {what} {name_or_obj!r}; choose one of {sorted(table)} or pass an instance")
    dotted, hint = table[name_or_obj]
    module_name, attr = dotted.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(f"the {name_or_obj!r} {what} needs packages that are not installed "
                                     f"({exc.name}); install them with: {hint}") from exc
    return getattr(module, attr)(**kwargs)
