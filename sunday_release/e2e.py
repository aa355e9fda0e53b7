"""Pure decisions of the E2E stage: pixel diffs, k6 summaries, the visual config and the trend history."""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageFilter

from sunday_release.errors import ConfigError

__all__ = [
    "HISTORY_FILE",
    "K6Summary",
    "PixelDiff",
    "ViewResult",
    "VisualConfig",
    "append_history",
    "diff_images",
    "diff_thumbnail_markdown",
    "history",
    "k6_rows",
    "load_visual_config",
    "parse_k6_summary",
    "render_history",
    "trend_markdown",
    "trend_record",
]

HISTORY_FILE = "e2e-history.jsonl"
_PAD = (255, 0, 255)  # where one image is larger than the other: never equal to a real pixel
_DIFF_RED = (230, 0, 40)


# ------------------------------------------------------------------------------------------ pixel diff
@dataclass(frozen=True)
class PixelDiff:
    """How far two screenshots are apart."""

    width: int
    height: int
    differing: int  # pixels beyond tolerance (anti-aliased edges excepted)
    size_changed: bool

    @property
    def fraction(self) -> float:
        total = self.width * self.height
        return self.differing / total if total else 0.0


def _rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    rgb = image.convert("RGB")
    if rgb.size == size:
        return rgb
    canvas = Image.new("RGB", size, _PAD)
    canvas.paste(rgb, (0, 0))
    return canvas


def _beyond(image: Image.Image, low: Image.Image, high: Image.Image, tolerance: int) -> Image.Image:
    """Mask (L, 0/255): pixels with a channel below `low - tolerance` or above `high + tolerance`."""
    under = ImageChops.subtract(low, image)  # low - image, clipped at 0
    over = ImageChops.subtract(image, high)
    worst = ImageChops.lighter(under, over)
    r, g, b = worst.split()
    channel_max = ImageChops.lighter(ImageChops.lighter(r, g), b)
    return channel_max.point(lambda v: 255 if v > tolerance else 0)


def diff_images(baseline: Image.Image, actual: Image.Image, tolerance: int = 24) -> tuple[PixelDiff, Image.Image]:
    """Compare two screenshots; return the diff numbers and a diff image (changed pixels in red).

    A pixel differs when one of its channels moved by more than `tolerance` (0-255) AND it is not an
    anti-aliasing shift: a pixel whose value lies within the range of the other image's 3x3
    neighbourhood (both ways) is an edge rendered a sub-pixel apart, and is tolerated. Images of
    different sizes are compared on the larger canvas; the missing area counts as differing.
    """
    size = (max(baseline.width, actual.width), max(baseline.height, actual.height))
    base, act = _rgb(baseline, size), _rgb(actual, size)
    strict = _beyond(act, base, base, tolerance)
    if strict.getbbox() is None:
        mask = strict
    else:
        lo_b, hi_b = base.filter(ImageFilter.MinFilter(3)), base.filter(ImageFilter.MaxFilter(3))
        lo_a, hi_a = act.filter(ImageFilter.MinFilter(3)), act.filter(ImageFilter.MaxFilter(3))
        not_aa = ImageChops.lighter(_beyond(act, lo_b, hi_b, tolerance), _beyond(base, lo_a, hi_a, tolerance))
        mask = ImageChops.multiply(strict, not_aa)
    differing = mask.histogram()[255]
    faded = Image.blend(base.convert("L").convert("RGB"), Image.new("RGB", size, (255, 255, 255)), 0.7)
    faded.paste(Image.new("RGB", size, _DIFF_RED), (0, 0), mask)
    size_changed = baseline.size != actual.size
    return PixelDiff(size[0], size[1], differing, size_changed), faded


def diff_thumbnail_markdown(image: Image.Image, alt: str, max_width: int = 480) -> str:
    """A markdown image embedding a downscaled copy of `image` as a data URI."""
    scale = min(1.0, max_width / max(image.width, 1))
    thumb = image.convert("RGB").resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


# ------------------------------------------------------------------------------------------ visual config
@dataclass(frozen=True)
class ViewSpec:
    """One named view: the fraction of differing pixels it may show, and what to mask."""

    name: str
    threshold: float
    mask: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class VisualConfig:
    """app/e2e/visual.json: the per-channel tolerance and the views with their thresholds."""

    tolerance: int
    views: tuple[ViewSpec, ...]


def load_visual_config(path: Path) -> VisualConfig:
    """Read and validate visual.json; ConfigError names the file, the key and what was expected."""
    name = str(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(name, "", "file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(name, "", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(name, "", "expected an object")
    tolerance = data.get("tolerance", 24)
    if not isinstance(tolerance, int) or isinstance(tolerance, bool) or not 0 <= tolerance <= 255:
        raise ConfigError(name, "tolerance", f"expected an integer 0..255, got {tolerance!r}")
    views = data.get("views")
    if not isinstance(views, dict) or not views:
        raise ConfigError(name, "views", "expected a non-empty object of view name → {threshold}")
    specs = []
    for view, spec in views.items():
        threshold = spec.get("threshold") if isinstance(spec, dict) else None
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ConfigError(name, f"views.{view}.threshold", f"expected a fraction 0..1, got {threshold!r}")
        mask = spec.get("mask", [])
        if not isinstance(mask, list) or not all(isinstance(m, str) for m in mask):
            raise ConfigError(name, f"views.{view}.mask", "expected a list of CSS selectors")
        specs.append(ViewSpec(view, float(threshold), tuple(mask), str(spec.get("description", ""))))
    return VisualConfig(tolerance, tuple(specs))


@dataclass(frozen=True)
class ViewResult:
    """The verdict on one view: passed, failed, updated (baseline rewritten), missing baseline, error."""

    view: str
    verdict: str
    threshold: float = 0.0
    fraction: float = 0.0
    differing: int = 0
    diff_image: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in ("passed", "updated")


def judge_view(view: ViewSpec, diff: PixelDiff) -> str:
    """passed when the differing fraction is within the view's threshold (a size change never passes)."""
    return "passed" if diff.fraction <= view.threshold and not diff.size_changed else "failed"


# ------------------------------------------------------------------------------------------ k6
@dataclass(frozen=True)
class K6Summary:
    """The numbers of one k6 run (`--summary-export`), and which thresholds were crossed."""

    requests: int
    rps: float
    error_rate: float
    p95_ms: float
    avg_ms: float
    max_ms: float
    thresholds: tuple[tuple[str, str, bool], ...] = field(default=())  # (metric, expression, crossed)

    @property
    def crossed(self) -> list[str]:
        return [f"{metric}: {expr}" for metric, expr, bad in self.thresholds if bad]


def _number(metric: Mapping[str, Any], key: str) -> float:
    value = metric.get(key, 0.0)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def parse_k6_summary(text: str) -> K6Summary:
    """Parse k6's `--summary-export` JSON. A threshold value `true` means it was CROSSED (failed).

    Raises ValueError when the text is not a k6 summary (no `metrics` object).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"k6 summary is not JSON ({exc})") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError("k6 summary has no `metrics` object")
    duration = metrics.get("http_req_duration", {})
    failed = metrics.get("http_req_failed", {})
    reqs = metrics.get("http_reqs", {})
    thresholds = tuple(sorted((name, expr, bool(crossed)) for name, metric in metrics.items()
                              if isinstance(metric, dict)
                              for expr, crossed in (metric.get("thresholds") or {}).items()))
    # http_req_failed is a Rate: `value` is the failed share (`passes` counts failed requests)
    error_rate = _number(failed, "value") if "value" in failed else _number(failed, "rate")
    return K6Summary(requests=int(_number(reqs, "count")), rps=_number(reqs, "rate"), error_rate=error_rate,
                     p95_ms=_number(duration, "p(95)"), avg_ms=_number(duration, "avg"),
                     max_ms=_number(duration, "max"), thresholds=thresholds)


def k6_rows(summary: K6Summary) -> list[dict[str, str]]:
    """Rows of the `e2e-load-ENV` table artifact: key numbers, then every threshold and its verdict."""
    rows = [
        {"metric": "http_reqs", "value": f"{summary.requests} ({summary.rps:.1f}/s)", "threshold": "", "verdict": ""},
        {"metric": "http_req_duration p(95)", "value": f"{summary.p95_ms:.1f} ms", "threshold": "", "verdict": ""},
        {"metric": "http_req_duration avg / max", "value": f"{summary.avg_ms:.1f} / {summary.max_ms:.1f} ms",
         "threshold": "", "verdict": ""},
        {"metric": "http_req_failed", "value": f"{summary.error_rate:.2%}", "threshold": "", "verdict": ""},
    ]
    rows += [{"metric": metric, "value": "", "threshold": expr, "verdict": "CROSSED" if bad else "ok"}
             for metric, expr, bad in summary.thresholds]
    return rows


# ------------------------------------------------------------------------------------------ trends
def trend_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The key numbers of one E2E run (the flow's summary) as one history line."""
    functional, visual, load = summary.get("functional", {}), summary.get("visual", {}), summary.get("load", {})
    views = visual.get("views", {})
    return {
        "at": summary.get("finished", ""), "project": summary.get("project", ""), "env": summary.get("env", ""),
        "flow_run_id": summary.get("flow_run_id", ""),
        "state": summary.get("state", ""),
        "functional": functional.get("verdict", ""), "passed": functional.get("passed", 0),
        "failed": functional.get("failed", 0),
        "visual": visual.get("verdict", ""),
        "visual_diffs": sorted(v for v, r in views.items() if r.get("verdict") not in ("passed", "updated")),
        "visual_max_fraction": max((float(r.get("fraction", 0.0)) for r in views.values()), default=0.0),
        "load": load.get("verdict", ""), "k6_p95_ms": load.get("p95_ms"), "k6_error_rate": load.get("error_rate"),
    }


def history_path(home: Path | None = None) -> Path:
    """SUNDAY_HOME/e2e-history.jsonl."""
    root = home or Path(os.environ.get("SUNDAY_HOME", Path.home() / ".sunday-release")).expanduser()
    return root / HISTORY_FILE


def append_history(record: Mapping[str, Any], path: Path | None = None) -> Path:
    """Append one record (one JSON line); returns the file."""
    file = path or history_path()
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
    return file


def history(n: int = 20, env: str | None = None, path: Path | None = None,
            project: str | None = None) -> list[dict[str, Any]]:
    """The last `n` records (oldest first), of one environment / project if given; bad lines are skipped.

    A record from before projects has no `project`: it matches no `project` filter.
    """
    file = path or history_path()
    if not file.exists():
        return []
    records: list[dict[str, Any]] = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (env is None or record.get("env") == env) and (
                project is None or record.get("project") == project):
            records.append(record)
    return records[-n:] if n > 0 else []


def _fmt(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, (int, float)) else "-"


def _row(r: Mapping[str, Any]) -> list[str]:
    diffs = r.get("visual_diffs") or []
    return [str(r.get("at", ""))[:19], str(r.get("project") or "-"), str(r.get("env", "")), str(r.get("state", "")),
            f"{r.get('passed', 0)}/{r.get('failed', 0)}",
            ", ".join(diffs) if diffs else (str(r.get("visual", "")) or "-"),
            _fmt(r.get("k6_p95_ms"), "{:.0f} ms"), _fmt(r.get("k6_error_rate"), "{:.2%}")]


_HEADER = ["finished", "project", "env", "state", "tests pass/fail", "visual diffs", "k6 p95", "k6 errors"]


def render_history(records: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of history records, for `sunday-release e2e --history`."""
    if not records:
        return "no E2E runs recorded yet"
    rows = [_HEADER, *[_row(r) for r in records]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def trend_markdown(where: str, records: Iterable[Mapping[str, Any]]) -> str:
    """The `e2e-trend-PROJECT-ENV` artifact (`where`: `PROJECT/ENV`): one table row per run, newest last."""
    lines = [f"# E2E trend of {where}", "", "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in _row(r)) + " |" for r in records]
    return "\n".join(lines) + "\n"


def as_dict(value: Any) -> dict[str, Any]:
    """A frozen dataclass as a plain dict (for summaries)."""
    return asdict(value)
