"""The headline figure of a run, when two figures are comparable, and which differences are real.

The primary figure (lower is better) is the floor-normalised one at the held-out size: FD in
the in-domain classifier's features over its floor for images (``fd_ratio``), sliced
Wasserstein-2 over its floor for vectors (``swd_ratio``), each with an interval from a
bootstrap over the samples and a jackknife over the reference (``diffusion_core.evaluation.intervals``);
records written before floors fall back to raw FD or SWD, with no interval. Figures are
comparable or not ranked: only figures measured alike (same figure, feature extractor hash,
reference split and size, sample count, bootstrap draws, jackknife groups) are compared, and a difference is
called real only when its interval at the stated family-wise level excludes zero. A figure
without an interval is listed, never ranked. The report (``flows.stages.compare``) and the
registry's champion rule (``flows.tracking.registry``) both decide through ``pairwise``.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from diffusion_core.evaluation import intervals

LEVEL = intervals.LEVEL
PRIMARY = {"image": "fd", "vector": "swd"}  # the raw figure, for records without a floor
LABELS = {"image": "FD/floor", "vector": "SWD/floor"}
FIGURE_OF = {"image": "fd_at_n", "vector": "swd"}  # the figure the ratio divides, at the floor's size
# what makes two figures comparable, as (metrics key, name in a report)
MEASURED_BY = (("feature_extractor_sha256", "feature extractor"), ("reference_split", "reference split"),
               ("num_reference", "reference size"), ("num_samples", "sample count"),
               ("bootstrap_seed", "bootstrap seed"), ("bootstrap_replicates", "bootstrap replicates"),
               ("jackknife_groups", "reference jackknife groups"))


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def data_kind(metrics: dict) -> str | None:
    """'image' or 'vector' by the figures a metrics record holds; None when it holds neither."""
    if any(k in metrics for k in ("fd_ratio", "fd", "fd_at_n")):
        return "image"
    return "vector" if any(k in metrics for k in ("swd_ratio", "swd")) else None


def _interval(metrics: dict, name: str) -> dict:
    """The ratio's interval fields, or Nones for a record without one."""
    keys = {"se": f"{name}_ratio_sem", "low": f"{name}_ratio_low", "high": f"{name}_ratio_high"}
    reps = metrics.get(f"{name}_replicates")
    if not all(finite(metrics.get(k)) for k in keys.values()) or not reps:
        return {"se": None, "low": None, "high": None, "replicates": None, "jackknife": None, "level": None}
    return {**{k: float(metrics[v]) for k, v in keys.items()}, "replicates": reps,
            "jackknife": metrics.get(f"{name}_jackknife"),
            "level": metrics.get("interval_level", LEVEL)}


def headline(metrics: dict, kind: str | None = None) -> dict | None:
    """The figure that ranks a run: {metric, value, label, within_floor, se, low, high, level,
    replicates, figure, floor}. FD/floor or SWD/floor at the held-out size with its interval;
    else (records without a floor) raw FD or SWD without one; None when there is neither."""
    kind = kind or data_kind(metrics)
    if kind is None:
        return None
    name = PRIMARY[kind]
    if finite(metrics.get(f"{name}_ratio")):
        return {"metric": f"{name}_ratio", "value": float(metrics[f"{name}_ratio"]), "label": LABELS[kind],
                "within_floor": metrics.get(f"{name}_within_floor"), **_interval(metrics, name),
                "figure": metrics.get(FIGURE_OF[kind]), "floor": metrics.get(f"{name}_floor")}
    if finite(metrics.get(name)):
        return {"metric": name, "value": float(metrics[name]), "label": name.upper(), "within_floor": None,
                **_interval({}, name), "figure": None, "floor": None}
    return None


def num(x: float) -> str:
    """A figure, difference or bound: two decimals, or two significant digits when smaller."""
    return f"{x:.2f}" if abs(x) >= 0.05 else f"{x:.2g}"


def headline_text(figure: dict) -> str:
    """'FD/floor 1.52 [1.40, 1.64] (within floor)': the figure with its 95% interval, as a
    report and a run tag show it; 'no interval' when it has none."""
    bounds = "(no interval)" if figure.get("low") is None else f"[{num(figure['low'])}, {num(figure['high'])}]"
    within = " (within floor)" if figure.get("within_floor") else ""
    return f"{figure['label']} {num(figure['value'])} {bounds}{within}"


def _tag(value) -> str:
    return "" if value is None else str(value)


def measurement(metrics: dict) -> str:
    """How a record's figures were measured, as a short stable string: the feature extractor's
    sha256 (first 12 hex digits), the reference split and its size, the sample count, the
    bootstrap's seed and replicates."""
    sha = metrics.get("feature_extractor_sha256")
    return (f"extractor={sha[:12] if sha else 'none'} reference={_tag(metrics.get('reference_split'))}:"
            f"{_tag(metrics.get('num_reference'))} samples={_tag(metrics.get('num_samples'))} "
            f"bootstrap={_tag(metrics.get('bootstrap_seed'))}x{_tag(metrics.get('bootstrap_replicates'))}"
            f"{' jackknife=' + str(metrics['jackknife_groups']) if metrics.get('jackknife_groups') else ''}")


def measurement_tags(metrics: dict, kind: str | None = None) -> dict:
    """The strings that decide comparability (as registry tags hold them): the primary
    figure's name, ``measurement`` and each field of MEASURED_BY."""
    figure = headline(metrics, kind)
    return {"primary_metric": figure["metric"] if figure else "", "measurement": measurement(metrics),
            **{key: _tag(metrics.get(key)) for key, _ in MEASURED_BY}}


def _short(value: str) -> str:
    return value[:12] if len(value) == 64 else (value or "none")  # a sha256 by its head


def not_comparable(tags: dict, reference: dict) -> str | None:
    """Why a figure measured as ``tags`` is not ranked against one measured as ``reference``
    (both as ``measurement_tags`` gives them); None when they were measured alike."""
    if tags.get("primary_metric") != reference.get("primary_metric"):
        return f"another figure ({tags.get('primary_metric')} vs {reference.get('primary_metric')})"
    mine, theirs = tags.get("measurement", ""), reference.get("measurement", "")
    if mine == theirs:
        return None
    if not mine or not theirs:
        return "how it was measured is not recorded (registered before figures recorded it)"
    diffs = [f"{label} {_short(tags.get(key, ''))} vs {_short(reference.get(key, ''))}"
             for key, label in MEASURED_BY if tags.get(key, "") != reference.get(key, "")]
    return "measured with another " + ", ".join(diffs or [f"method ({mine} vs {theirs})"])


def ranked(figure: dict | None) -> bool:
    """Whether a figure can be ranked: it has an interval and the replicates behind it."""
    return bool(figure) and figure.get("replicates") is not None and finite(figure.get("figure")) \
        and finite(figure.get("floor"))


def pairwise(named: list[tuple[str, dict]], level: float = LEVEL) -> list[dict]:
    """Every pair of the ranked figures (measured alike), each at the Bonferroni level that
    keeps the family's confidence at ``level``: {a, b, estimate (a − b over the floor), low,
    high, level, separated}, a the lower (better) figure. The replicates are paired (the same
    reference and floor draws), so the noise two runs share cancels."""
    named = sorted(((n, f) for n, f in named if ranked(f)), key=lambda nf: nf[1]["value"])
    pairs = list(combinations(named, 2))
    each = intervals.family_level(level, len(pairs))
    out = []
    for (name_a, a), (name_b, b) in pairs:
        diff = intervals.difference(b["figure"], b["replicates"], a["figure"], a["replicates"],
                                    floor=float(a["floor"]), level=each,
                                    jackknife_a=b.get("jackknife"), jackknife_b=a.get("jackknife"))
        out.append({"a": name_a, "b": name_b, **diff, "family_level": level, "pairs": len(pairs)})
    return out


def replicates_tag(replicates) -> str:
    """(figure, floor) replicates as a registry tag: 'f,l;f,l;...' at 8 significant digits."""
    return ";".join(f"{f:.8g},{l:.8g}" for f, l in np.asarray(replicates, dtype=np.float64))


def replicates_from_tag(text: str) -> list | None:
    if not text:
        return None
    return [[float(v) for v in pair.split(",")] for pair in text.split(";")]
