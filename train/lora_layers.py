"""LoRA on the top N decoder layers of a target (Medusa-2's and SDSAT's `lora_layers`): the layers
below keep the original weights, so their output is computed once per step and reused (by the
original model's forward for the KL term, or by passes that need no gradient through them)."""

from __future__ import annotations

import contextlib

import torch


def top_layer_indices(model: torch.nn.Module, count: int, setting: str) -> list[int]:
    """Indices of the top `count` decoder layers, refused when the target has fewer."""
    layers = decoder_layers(model)
    if count > len(layers):
        raise ValueError(f"{setting}={count}, but the target has only {len(layers)} decoder layers: use at most {len(layers)} (0 = every layer)")
    return list(range(len(layers) - count, len(layers)))


def linear_names(model: torch.nn.Module) -> list[str]:
    """peft's module names for every linear layer of a decoder layer (`layers_to_transform` takes names, not `all-linear`)."""
    return sorted({name.rsplit(".", 1)[-1] for name, child in decoder_layers(model)[0].named_modules() if isinstance(child, torch.nn.Linear)})


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The target's stack of decoder layers: the ModuleList as long as config.num_hidden_layers (Llama, Qwen, Mistral, ... call it `layers`)."""
    count = model.config.num_hidden_layers
    for name, child in model.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count and name.split(".")[-1] in ("layers", "h", "blocks"):
            return child
    raise ValueError(f"cannot find the {count} decoder layers of {type(model).__name__}: LoRA on the top layers needs a ModuleList named layers, h or blocks; use lora_layers=0")


@contextlib.contextmanager
def recorded_output(layer: torch.nn.Module | None):
    """Yields a dict whose "output" is what `layer` returned in the forward run inside the block (nothing recorded for None)."""
    record: dict = {}
    handle = layer.register_forward_hook(lambda _module, _args, output: record.__setitem__("output", output)) if layer is not None else None
    try:
        yield record
    finally:
        if handle is not None:
            handle.remove()


@contextlib.contextmanager
def replayed(layers, output):
    """Inside the block, each of `layers` returns `output` without computing (the last of them
    produced it; the layers before are bypassed because the next one ignores what they return)."""
    for layer in layers:
        layer.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def without_grad_below(layers, split: int):
    """Inside the block, a forward runs layers[:split] without recording a graph and the layers from
    `split` on as the surrounding grad mode says (their inputs then need no gradient)."""
    enabled = torch.is_grad_enabled()

    def grad_mode(mode: bool):
        def hook(*_):  # returns None: the layer's inputs stay as they are
            torch.set_grad_enabled(mode)
        return hook

    handles = [layers[0].register_forward_pre_hook(grad_mode(False))] if split else []
    if split < len(layers):
        handles.append(layers[split].register_forward_pre_hook(grad_mode(enabled)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.set_grad_enabled(enabled)
