"""The weights table of ``docs/weights.md``, generated from the model cards (``tools/model_zoo.py --weights-table``)."""

from __future__ import annotations

START, END = "<!-- weights:start -->", "<!-- weights:end -->"


def _hash(source) -> str:
    if source.hash is None:
        return "none published"
    return f"{source.hash_kind} `{source.hash}`"


def weights_table(pattern: str = "*") -> str:
    """One row per published source of every model matching ``pattern``: what ``pretrained=`` selects it, the
    ``reference`` it loads in, the top-1 its publisher reports, the file's resolution and classes, the published
    hash and the license. The card's default (``pretrained=True``) is in bold."""
    from ..registry import list_models, model_card

    lines = [
        "| model | `pretrained=` | reference | top-1 (publisher) | input | classes | published hash | license |",
        "|---|---|---|---|---|---|---|---|",
    ]
    without = []
    for name in list_models(pattern):
        card = model_card(name)
        if not card.sources:
            without.append(f"`{name}`")
            continue
        for s in card.sources:
            label = f"[{s.name}]({s.url})"
            label = f"**{label}**" if s.name == card.default_source else label
            top1 = "–" if s.top1 is None else f"{s.top1:.3f}".rstrip("0").rstrip(".")
            ref = "None" if s.reference is None else f"`{s.reference}`"
            lines.append(
                f"| `{name}` | {label} | {ref} | {top1} | {s.input_size} | {s.num_classes} | {_hash(s)} | {s.license} |"
            )
    if without:
        lines.append(f"\nNo published ImageNet weights: {', '.join(without)}.")
    return "\n".join(lines)
