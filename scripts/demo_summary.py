"""Print the demo's localisation result: trained vs untrained soft Dice per saliency map and class, and whether
the trained S_c reaches the demo's target (Dice >= 0.2 for each class and >= 3x the untrained model's).

Run from the repository root, e.g.::

    python scripts/demo_summary.py outputs/evaluate/metrics.json outputs/evaluate_untrained/metrics.json

Writes the same table as markdown next to the trained report (``demo_summary.md``) and exits 0 either way: the
demo reports what it got, it does not fail on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glam_bundle.atomic_io import atomic_output  # noqa: E402
from glam_bundle.constants import CLASS_NAMES  # noqa: E402

TARGET_DICE = 0.2
TARGET_RATIO = 3.0


def dice_means(metrics: dict) -> dict[str, dict[str, float | None]]:
    """{map: {class: mean soft Dice}} from an evaluation's metrics.json dict."""
    return {
        label: {name: entry["dice"][name]["mean"] for name in CLASS_NAMES}
        for label, entry in metrics["localisation"].items()
    }


def summary_table(trained: dict, untrained: dict) -> tuple[str, bool]:
    """Markdown table of trained vs untrained Dice and whether S_c meets the target."""
    ours, base = dice_means(trained), dice_means(untrained)
    lines = [
        "| Saliency map | class | Dice trained | Dice untrained | ratio |",
        "|---|---|---|---|---|",
    ]
    for label in ours:
        for name in CLASS_NAMES:
            value, reference = ours[label][name], base.get(label, {}).get(name)
            ratio = value / reference if value is not None and reference else None
            lines.append(
                f"| {label} | {name} | {_fmt(value)} | {_fmt(reference)} | {'n/a' if ratio is None else f'{ratio:.1f}x'} |"
            )
    final = ours.get("S_c", {})
    met = all(
        final.get(name) is not None
        and final[name] >= TARGET_DICE
        and base.get("S_c", {}).get(name) is not None
        and final[name] >= TARGET_RATIO * base["S_c"][name]
        for name in CLASS_NAMES
    )
    verdict = "meets" if met else "does NOT meet"
    lines += ["", f"S_c {verdict} the demo target (Dice >= {TARGET_DICE} for each class and >= {TARGET_RATIO:g}x untrained)."]
    return "\n".join(lines), met


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trained", type=Path, help="metrics.json of the trained model's evaluation")
    parser.add_argument("untrained", type=Path, help="metrics.json of the untrained model's evaluation")
    args = parser.parse_args(argv)
    for path in (args.trained, args.untrained):
        if not path.is_file():
            print(f"error: {path}: evaluation metrics not found (run configs/evaluate.json first)", file=sys.stderr)
            return 2
    table, _ = summary_table(*(json.loads(p.read_text(encoding="utf-8")) for p in (args.trained, args.untrained)))
    with atomic_output(args.trained.parent / "demo_summary.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
