"""The one name a layer is shown by in the widget: on its picker chip, its overview row, its
curves, its heatmap's title and in the alert list.

Derived from the layer's store name (the key of `stats[...]`, `show_layers` and
`Alert.layer`) in `display_name` alone, so a change of the store's naming changes it in
one place. Today the two are the same: "layers.0 (Conv2dWithReLU)" reads as the module
path and its type, and it is what a user types to get that layer's stats.
"""

from __future__ import annotations

__all__ = ["display_name", "display_names", "shorten"]


def display_name(name: str) -> str:
    """The display name of the layer stored as `name`."""
    return name


def display_names(names: list[str]) -> list[str]:
    """`display_name` of each name, in order."""
    return [display_name(n) for n in names]


def shorten(label: str, width: int) -> str:
    """`label` in at most `width` characters, keeping what tells layers apart: the end of
    the module path. The type in parentheses is cut first ("blocks.3.fc1 (Lin…)"), then
    the start of the path ("…3.mlp.fc1")."""
    if len(label) <= width:
        return label
    path, sep, kind = label.partition(" (")
    room = width - len(path) - 4  # characters of the type that fit in " (…)"
    if sep and room >= 3:
        return f"{path} ({kind.rstrip(')')[:room]}…)"
    return path if len(path) <= width else "…" + path[-(width - 1) :]
