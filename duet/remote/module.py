"""duet.Module: a model the scientist defines once and trains on the owner's side, layer by remote layer.

A subclass builds its layers through ``self.torch_ref`` (``torch`` locally, ``d.torch`` remotely).
``send(d)`` runs the subclass's own ``__init__`` again with ``d.torch``, so the owner builds the same layers
through allowlisted constructors (no code and no ``repr`` of the scientist's is parsed), groups them in one
owner-side container, and copies the local weights into it in one transfer. ``forward`` always runs on
the scientist's side; on a remote model each layer it calls is a remote call.
"""

from __future__ import annotations

import collections
import copy
from typing import Any

import torch

from .pointer import Pointer, RemoteNamespace

__all__ = ["Module"]


class Module:
    """A model for duet: ``class Net(duet.Module)`` with ``__init__(self, torch_ref)`` and ``forward``."""

    torch_ref: Any
    training: bool
    _duet_init: tuple[tuple[Any, ...], dict[str, Any]]
    _duet_layers: collections.OrderedDict[str, Any]
    _duet_container: Pointer | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Module:
        self = super().__new__(cls)
        object.__setattr__(self, "_duet_init", (args, kwargs))
        object.__setattr__(self, "_duet_layers", collections.OrderedDict())
        return self

    def __init__(self, torch_ref: Any = torch) -> None:
        object.__setattr__(self, "torch_ref", torch_ref)
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_duet_container", None)

    # ---- layers --------------------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (torch.nn.Module, Module, Pointer)) and not name.startswith("_"):
            self._duet_layers[name] = value
        object.__setattr__(self, name, value)

    @property
    def is_local(self) -> bool:
        return not isinstance(self.torch_ref, RemoteNamespace)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def modules(self) -> list[tuple[str, Any]]:
        return list(self._duet_layers.items())

    # ---- the torch.nn.Module surface the tutorial uses -----------------------------------------------

    def parameters(self) -> Any:
        if self.is_local:
            return [p for layer in self._local_layers() for p in layer.parameters()]
        return self._container().parameters()

    def state_dict(self) -> Any:
        if self.is_local:
            sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
            for name, layer in self._duet_layers.items():
                for key, value in layer.state_dict().items():
                    sd[f"{name}.{key}"] = value
            return sd
        return self._container().state_dict()

    def load_state_dict(self, state_dict: Any) -> Any:
        if not self.is_local:
            return self._container().load_state_dict(state_dict)
        for name, layer in self._duet_layers.items():
            prefix = name + "."
            layer.load_state_dict(
                {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            )
        return None

    def train(self, mode: bool = True) -> Module:
        object.__setattr__(self, "training", mode)
        if self.is_local:
            for layer in self._duet_layers.values():
                layer.train(mode)
        else:
            self._container().train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        if self.is_local:
            for layer in self._local_layers():
                layer.zero_grad()
        else:
            self._container().zero_grad()

    def _local_layers(self) -> list[Any]:
        return [layer for layer in self._duet_layers.values()]

    def __repr__(self) -> str:
        where = "local" if self.is_local else "remote"
        inner = ", ".join(
            f"{k}={type(v).__name__ if not isinstance(v, Pointer) else 'remote'}"
            for k, v in self._duet_layers.items()
        )
        return f"<{type(self).__name__} ({where}) {inner}>"

    # ---- moving between the two sides ----------------------------------------------------------------

    def _rebuilt(self, torch_ref: Any) -> Module:
        """The same class built again with ``torch_ref``; a local build leaves the caller's RNG as it was
        (its fresh weights are overwritten anyway)."""
        args, kwargs = self._duet_init
        old = self.torch_ref
        args = tuple(torch_ref if a is old else a for a in args)
        kwargs = {k: torch_ref if v is old else v for k, v in kwargs.items()}
        if not any(a is torch_ref for a in args) and not any(v is torch_ref for v in kwargs.values()):
            kwargs["torch_ref"] = torch_ref
        if isinstance(torch_ref, RemoteNamespace):
            return type(self)(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            return type(self)(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Module:
        """A local model copies like an ``nn.Module`` (same class, copied weights); a remote one cannot."""
        if not self.is_local:
            raise TypeError("a remote model cannot be copied: .get() it, or send() the local model again")
        twin = self._rebuilt(self.torch_ref)
        twin.load_state_dict(copy.deepcopy(self.state_dict(), memo))
        twin.train(self.training)
        return twin

    def _container(self) -> Pointer:
        container = self._duet_container
        if container is None:
            remote = self.torch_ref._remote
            children = {}
            for name, layer in self._duet_layers.items():
                children[name] = layer._container() if isinstance(layer, Module) else layer
            container = remote.container(children, type(self).__name__)
            object.__setattr__(self, "_duet_container", container)
        return container

    def send(self, duet: Any) -> Module:
        """The same model on the owner's side: same layers (allowlisted constructors), same weights."""
        if not self.is_local:
            raise ValueError("this model is already remote")
        remote_model = self._rebuilt(duet.torch)
        container = remote_model._container()
        # the layers' constructors leave now: the owner builds them while the weights are on their way
        remote_model.torch_ref._remote.flush()
        container.load_state_dict(self.state_dict())
        remote_model.train(self.training)
        return remote_model

    def get(
        self,
        request_block: bool = False,
        name: str = "",
        reason: str = "",
        timeout_secs: float = 20,
        delete_obj: bool = False,
        strict: bool = False,
    ) -> Module | None:
        """Bring the trained weights home (through the owner's request queue) as a local model."""
        if self.is_local:
            return self
        state = (
            self._container()
            .state_dict()
            .get(
                request_block=request_block,
                name=name,
                reason=reason,
                timeout_secs=timeout_secs,
                delete_obj=delete_obj,
                strict=strict,
            )
        )
        if state is None:
            return None
        local_model = self._rebuilt(torch)
        local_model.load_state_dict(state)
        local_model.train(self.training)
        return local_model
