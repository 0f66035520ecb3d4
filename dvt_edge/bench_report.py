"""Bench results as people read them: Markdown tables, PNG plots, merged reports from several devices.

A point that does not reach matched accuracy on the holdout is marked as such in the table
and the plot, never shown as a plain speedup.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dvt_edge.logs import pyplot
from dvt_runtime.io import atomic_write, atomic_write_json, save_png, written_together
from dvt_runtime.stats import accuracy_interval, chance_bar

__all__ = ["SCHEMA", "MATCH_POINTS", "markdown", "halvings_line", "matched_cells", "throughput_markdown", "plot", "plot_exits", "plot_throughput",
           "write_outputs", "load_results"]

SCHEMA = "dvt-edge/bench/1"
MATCH_POINTS = 0.2  # "matched accuracy": within this many points of the last exit


def _device_label(r: dict) -> str:
    d = r.get("device", {})
    return f"{d.get('device_name') or d.get('hostname', '?')} ({r.get('threads') or '?'} thr)"


def _series_label(results: list[dict], r: dict, row: dict) -> str:
    """A plot series' name: device, threads, target, precision, and the model when the results hold several."""
    several = len({x.get("model") for x in results}) > 1
    return f"{_device_label(r)} {r.get('model', '?') + ' ' if several else ''}{row['target']} {row['precision']}"


def halvings_line(hv: dict) -> str:
    """One sentence on the matched-accuracy rule replayed on other random halvings (``bench.matched_over_halvings``)."""
    rng = f"{min(hv['speedups']):.2f}-{max(hv['speedups']):.2f}x"
    # the matched splits' speedup leads: an unmatched split's speedup is never a plain figure
    lead = (f"predicted speedup median {hv['matched_speedup_median']:.2f}x among the matched ones"
            if hv["matched_speedup_median"] is not None else "no split matched")
    unmatched = hv["n"] - hv["matched"]
    lead += (f" ({hv['speedup_median']:.2f}x over all {hv['n']}, range {rng}, including {unmatched} NOT matched)"
             if unmatched else f" (range {rng})")
    if hv.get("last_exit_fallbacks"):  # counted as matched at 1.0x: the rule then runs the last exit alone
        lead += f"; {hv['last_exit_fallbacks']} of them found no cheaper point as accurate as the last exit (1.00x, the last exit alone)"
    return (f"How far this split can be trusted: the same threshold rule on {hv['n']} other random halvings (thresholds chosen "
            f"on one half, accuracy and mean latency predicted on the other {hv['n_holdout']} images from this run's stage "
            f"prices, nothing re-timed) came no more than {MATCH_POINTS} points below the last exit on {hv['matched']} of {hv['n']}; "
            f"{lead}.")


def intervals_line(row: dict, n_images: int) -> str:
    """The accuracies' 95% Wilson intervals: each exit's on all ``n_images`` images, the last exit alone's and the matched
    cascade's on the holdout (where each one's own accuracy lies, at 95% confidence, from one sample of each)."""
    def ci(acc, n) -> str:
        try:
            return "{:.2f}-{:.2f}".format(*accuracy_interval(float(acc), int(n)))
        except (TypeError, ValueError):  # a non-finite or missing figure: no interval, never a number
            return "-"

    per_exit = " / ".join(ci(s.get("accuracy_all"), n_images) for s in row["static"])
    line = f"Accuracy 95% intervals (Wilson): per exit on all {n_images} images {per_exit}"
    n_hold, mt = row.get("n_holdout"), row.get("matched") or {}
    if n_hold:
        line += f"; on the {n_hold} holdout images, last exit alone {ci(row['static'][-1].get('accuracy'), n_hold)}"
        if mt and not mt.get("at_chance"):  # at chance there is no claim to qualify
            what = "cascade at matched accuracy" if mt.get("within_match") else "cascade at its thresholds (NOT matched)"
            line += f", {what} {ci(mt.get('accuracy'), n_hold)} (both on the same images: their difference varies less than either)"
    return line + "."


def _few_images_note(rows: list[dict]) -> str:
    """Said when a half of the images is too few to trust the accuracies (each image is 100/n points), else ''."""
    from dvt_runtime.checks import FEW_IMAGES

    ok = [r for r in rows if r.get("status") == "ok" and "n_holdout" in r]
    if not ok or (hold := min(r["n_holdout"] for r in ok)) >= FEW_IMAGES:
        return ""
    cal = min(r["n_calibration"] for r in ok)
    return (f"only {hold} images measure the cascade and {cal} choose its thresholds: each measured image is {100 / hold:.2g} points "
            f"of accuracy, so matched accuracy and its speedup are rough; bench at least {2 * FEW_IMAGES} images (--n)")


def matched_cells(mt: Optional[dict]) -> tuple[str, str]:
    """(accuracy/latency cell, speedup cell) of the matched-accuracy point; a point that missed
    the match on the holdout says so and is never shown as a plain speedup."""
    if not mt:
        return "not reached on the calibration split", "-"
    dyn = f"{mt['accuracy']:.2f}, {mt['measured_mean_ms']:.3f}"
    if mt.get("at_chance"):  # any cascade "matches" a last exit that classifies nothing
        bar = chance_bar(round(100 / mt["chance_accuracy"]))  # the bar the claim was judged on, not chance itself
        return dyn, (f"no claim: the last exit scores {mt['accuracy'] - mt['accuracy_delta']:.2f}% (under {bar:.2f}%; chance "
                     f"{mt['chance_accuracy']:.2f}%): "
                     f"{mt['speedup_vs_last_exit']:.2f}x means nothing")
    if mt["within_match"]:
        bl = mt.get("block_speedups")  # interleaved blocks: the spread of the ratio on this machine
        return dyn, f"{mt['speedup_vs_last_exit']:.2f}x" + (f" (blocks {min(bl):.2f}-{max(bl):.2f}x)" if bl else "")
    miss = f"NOT matched: {mt['accuracy_delta']:+.2f} pts vs last exit (limit -{MATCH_POINTS})"
    return f"{dyn} ({miss})", f"no speedup at matched accuracy ({mt['speedup_vs_last_exit']:.2f}x at {mt['accuracy_delta']:+.2f} pts)"


def throughput_markdown(r: dict) -> list[str]:
    """The throughput table (static vs dynamic images/s per batch size) of every row that has one."""
    out = []
    for row in r["rows"]:
        tp = row.get("throughput")
        if row.get("status") != "ok" or not tp:
            if r.get("mode") == "throughput":
                out.append(f"\n{row['target']} {row['precision']}: {row.get('error') or row.get('status')}\n")
            continue
        thr = ", ".join("-" if v is None else f"{v:.4g}" for v in tp["thresholds"])
        mb = "any" if tp["max_batch"] is None else tp["max_batch"]
        rounds = next((t.get("rounds") for t in tp["rows"] if "rounds" in t), None)
        n, of = next(((t["n"], t.get("of", t["n"])) for t in tp["rows"] if "n" in t), (None, None))
        used = "" if n is None else f"; {n} images" if n == of else f"; {n} of {of} images (whole calls of every batch size)"
        out.append(f"\n### {row['target']} {row['precision']}: throughput, {r.get('threads', '?')} thread(s), thresholds [{thr}], "
                   f"artifact max_batch {mb}" + (f"; medians of {rounds} interleaved rounds" if rounds else "") + used + "\n")
        if tp.get("within_match") is False:
            out.append("These thresholds did NOT reach matched accuracy on the holdout (see the matched-accuracy cell above): "
                       "the dynamic figures below are not at the last exit's accuracy.\n")
        elif "within_match" in tp and tp["within_match"] is None and r.get("mode") != "throughput":
            out.append("No matched-accuracy point was found on the calibration split: the cascade never stops early here.\n")
        has_acc = (r.get("mode") != "throughput" or r.get("has_accuracy", False)) and all(
            t.get("static_accuracy") is not None for t in tp["rows"] if "error" not in t)
        out.append("| batch | static (all stages) img/s | dynamic img/s | dynamic vs static (median of rounds' ratios) | dynamic vs batch 1 | exits % (1/2/...) |"
                   + (" accuracy static / dynamic % |" if has_acc else ""))
        out.append("|---|---|---|---|---|---|" + ("---|" if has_acc else ""))
        for t in tp["rows"]:
            if "error" in t:
                out.append(f"| {t['batch']} | {t['error']} | | | | |" + (" |" if has_acc else ""))
                continue
            vs1 = f"{t['dynamic_vs_one_by_one']:.2f}x" if "dynamic_vs_one_by_one" in t else "-"
            short = f" (each pass's last call {t['last_call']})" if t.get("last_call", t["batch"]) != t["batch"] else ""
            line = (f"| {t['batch']}{short} | {t['static_images_per_s']:.1f} | {t['dynamic_images_per_s']:.1f} | {t['speedup']:.2f}x | {vs1} | "
                    + "/".join(f"{100 * q:.0f}" for q in t["exit_fractions"]) + " |")
            if has_acc:
                miss = f" (NOT matched: {t['dynamic_accuracy'] - t['static_accuracy']:+.2f} pts)" if t.get("within_match") is False else ""
                line += f" {t['static_accuracy']:.2f} / {t['dynamic_accuracy']:.2f}{miss} |"
            out.append(line)
    return out


def _backends_line(rows: list[dict]) -> str:
    """What ran each row: the backend and its version, and an int8 row's quantization scheme per exit."""
    said = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        dev = (row.get("profile") or {}).get("device") or {}
        q = row.get("quantization") or []
        scheme = f", {' / '.join(map(str, q))} quantization per exit" if row.get("precision") == "int8" and q else ""
        said.append(f"{row['target']} {row['precision']}: {row.get('backend') or dev.get('backend') or '?'} "
                    f"{dev.get('backend_version') or '(version not recorded)'}{scheme}")
    return ("Ran on: " + "; ".join(said) + ".") if said else ""


def markdown(results: list[dict]) -> str:
    from dvt_edge.bench_device import busy_line, device_markdown, glance_markdown

    out = glance_markdown(results)
    for r in results:
        dev = _device_label(r)
        if r.get("mode") == "device":
            out.extend(device_markdown(r, dev))
            out.append("")
            continue
        if r.get("mode") == "latency":
            from dvt_edge.bench_latency import latency_markdown

            out.extend(latency_markdown(r, dev) + failures_markdown(r))
            out.append("")
            continue
        if r.get("mode") == "throughput":
            out.append(f"## {r['model']} on {dev}: throughput on {r['data']}\n")
            out.extend(throughput_markdown(r) + failures_markdown(r))
            out.append("")
            continue
        out.append(f"## {r['model']} on {dev}: {r['n_images']} images of {r['data']}\n")
        if r.get("created"):  # two runs of one device in a report: which is which
            out.append(f"Run {r['created']}" + (f": `{r['command']}`" if r.get("command") else "") + "\n")
        if r.get("data_note"):  # another set stood in for the checkpoint's own data
            out.append(f"Note: {r['data_note']}.\n")
        if few := _few_images_note(r["rows"]):
            out.append(f"Note: {few}.\n")
        out.append("| target | prec | status | exit sizes KB | per-exit top-1 % (artifact) | exit p50/p90 ms (cumulative) | last exit alone: acc %, mean ms | dynamic @ matched acc: acc %, mean ms | speedup |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for row in r["rows"]:
            if row.get("status") != "ok":
                msg = row.get("error") or row.get("status")
                out.append(f"| {row['target']} | {row['precision']} | {msg[:120]} | {row.get('artifact_kb', '-')} | | | | | |")
                continue
            st = row["static"]
            accs = " / ".join(f"{s['accuracy_all']:.2f}" for s in st)
            lats = " / ".join(f"{s['profile_p50_ms']:.3f}/{s['profile_p90_ms']:.3f}" for s in st)
            mt = row.get("matched") or {}
            dyn, sp = matched_cells(row.get("matched"))
            last_ms = mt.get("last_exit_mean_ms", st[-1]["measured_mean_ms"])  # timed interleaved with the matched cascade
            out.append(f"| {row['target']} | {row['precision']} | ok | {row['artifact_kb']} | {accs} | {lats} | "
                       f"{st[-1]['accuracy']:.2f}, {last_ms:.3f} | {dyn} | {sp} |")
        if used := _backends_line(r["rows"]):
            out.append(f"\n{used}")
        for row in r["rows"]:
            if row.get("status") != "ok":
                continue
            ov = row["runtime_overhead"]
            out.append(f"\n### {row['target']} {row['precision']}: budgets (holdout {row['n_holdout']} images)\n")
            out.append(f"Runtime overhead for a sample stopping at exit 1: predict {ov['predict_exit1_ms']:.4f} ms vs backend "
                       f"{ov['backend_exit1_ms']:.4f} ms = {ov['overhead_ms']:+.4f} ms ({ov['overhead_pct']:.1f}%; goal {ov['goal']}: "
                       f"{'met' if ov['within_goal'] else 'NOT met'}).\n")
            if said := busy_line(row.get("contention")):
                out.append(said + "\n")
            hv = (row.get("matched") or {}).get("halvings")
            if hv and not row["matched"].get("at_chance"):  # results before this field have none; at chance, no speedup claim
                out.append(halvings_line(hv) + "\n")
            out.append(intervals_line(row, r["n_images"]) + "\n")
            stop = row["profile"].get("stopping")
            if stop:  # what the search prices each exit at (profiles before dvt-profile/2 have none)
                means = [" / ".join(f"{c['mean']:.3f}" for c in rows) for rows in (stop, row["profile"]["cumulative"])]
                out.append(f"Mean ms per image, every image stopping at the exit (what the latency search prices each exit at, before predict's own overhead): {means[0]}; "
                           f"reaching it inside chains through every exit: {means[1]}.\n")
            out.append("| budget ms | latency-calibrated: acc %, mean ms (vs budget %; vs predicted %), p90 ms, exits % | "
                       "FLOPs-calibrated: acc %, mean ms (vs budget %), p90 ms, exits % |")
            out.append("|---|---|---|")
            for d, f in zip(row["dynamic"], row["flops_calibrated"]):
                out.append(f"| {d['budget_ms']:.3f} | {d['error']} | |" if "error" in d else
                           f"| {d['budget_ms']:.3f} | {_budget_cell(d)} | {_budget_cell(f)} |")
        out.extend(throughput_markdown(r) + failures_markdown(r))
        out.append("")
    return "\n".join(out)


def _budget_cell(v: dict) -> str:
    """A budget row's figures; its mean against the budget and the search's prediction (a budget left unspent as
    accuracy saturated is no error of the prices, which the second figure judges)."""
    vs_pred = f"; {100 * (v['measured_mean_ms'] / v['predicted_ms'] - 1):+.1f}%" if v.get("predicted_ms") else ""
    return (f"{v['accuracy']:.2f}, {v['measured_mean_ms']:.3f} ({v['error_vs_budget_pct']:+.1f}%{vs_pred}), "
            f"{v['measured_p90_ms']:.3f}, " + "/".join(f"{100 * q:.0f}" for q in v["exit_fractions"]))


def failures_markdown(r: dict) -> list[str]:
    """Each failed row's whole error under the tables (a table cell shows its start: the advice at its end was cut)."""
    failed = [row for row in r.get("rows", []) if row.get("status") not in (None, "ok") and row.get("error")]
    if not failed:
        return []
    out = ["\nFailed rows, in full:\n"]
    for row in failed:  # a multi-line error (a parity table) stays inside its list item, as code
        first, _, rest = str(row["error"]).partition("\n")
        out.append(f"- {row['target']} {row['precision']}: {first}")
        if rest:
            out += ["", "  ```", *(f"  {line}" for line in rest.splitlines()), "  ```"]
    return out


def plot(results: list[dict], path_acc: Path, path_exits: Optional[Path] = None) -> list[Path]:
    """The accuracy-vs-latency plot (and the exit-distribution one); returns the files written."""
    plt = pyplot()

    if not any(row.get("status") == "ok" and "static" in row for r in results for row in r["rows"]):
        return []  # throughput-only results: see plot_throughput
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k = 0
    for r in results:
        for row in r["rows"]:
            if row.get("status") != "ok" or "static" not in row:
                continue
            c = colors[k % len(colors)]
            k += 1
            label = _series_label(results, r, row)
            st = row["static"]
            ax.plot([s["measured_mean_ms"] for s in st], [s["accuracy"] for s in st], "s", color=c, mfc="none", ms=8)
            d = [p for p in row["dynamic"] if "error" not in p]
            ax.plot([p["measured_mean_ms"] for p in d], [p["accuracy"] for p in d], "-o", color=c, label=f"{label}: latency-calibrated")
            f = [p for p in row["flops_calibrated"] if "error" not in p]
            ax.plot([p["measured_mean_ms"] for p in f], [p["accuracy"] for p in f], ":x", color=c, alpha=0.7, label=f"{label}: FLOPs-calibrated")
            mt = row.get("matched")
            if mt:  # filled star: matched accuracy reached on the holdout; hollow with a note: missed
                ok = mt["within_match"] and not mt.get("at_chance")
                ax.plot([mt["measured_mean_ms"]], [mt["accuracy"]], "*", ms=13, color=c, mfc=c if ok else "none",
                        label=f"{label}: {'matched accuracy' if ok else 'NOT matched accuracy'} point")
                if not ok:
                    why = "last exit at chance" if mt.get("at_chance") else f"{mt['accuracy_delta']:+.2f} pts"
                    ax.annotate(f"not matched ({why})", (mt["measured_mean_ms"], mt["accuracy"]),
                                textcoords="offset points", xytext=(6, -10), fontsize=7, color=c)
    ax.set_xlabel("measured mean latency per image (ms, batch 1)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("dynamic cascade (lines) vs each exit alone (squares)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    save_png(fig, path_acc)
    return [path_acc] + ([path_exits] if path_exits is not None and plot_exits(results, path_exits) else [])


def plot_exits(results: list[dict], path_exits: Path) -> bool:
    """Stacked bars: the share of images leaving at each exit, per budget, per target x precision."""
    plt = pyplot()

    ok = [(r, row) for r in results for row in r["rows"] if row.get("status") == "ok" and "static" in row]
    if not ok:
        return False
    fig, axes = plt.subplots(1, len(ok), figsize=(3.2 * len(ok) + 1, 3.6), squeeze=False)
    for ax, (r, row) in zip(axes[0], ok):
        d = [p for p in row["dynamic"] if "error" not in p]
        ax.set_title(_series_label(results, r, row).replace(") ", ")\n", 1), fontsize=8)
        bottom, x = np.zeros(len(d)), np.arange(len(d))  # one bar per budget: close budgets never share a slot
        for e in range(len(row["static"])):
            v = np.array([p["exit_fractions"][e] * 100 for p in d])
            ax.bar(x, v, bottom=bottom, label=f"exit {e + 1}")
            bottom += v
        ax.set_xticks(x, [f"{p['budget_ms']:.3g}" for p in d])
        ax.set_xlabel("budget (ms)")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0][0].set_ylabel("images exiting (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path_exits)
    return True


def plot_throughput(results: list[dict], path: Path) -> bool:
    """Images/s against batch size, static (dashed) and dynamic (solid), per target x precision."""
    rows = [(r, row) for r in results for row in r["rows"] if row.get("status") == "ok" and row.get("throughput")]
    if not rows:
        return False
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (r, row) in enumerate(rows):
        t = [v for v in row["throughput"]["rows"] if "error" not in v]
        c, label = colors[k % len(colors)], _series_label(results, r, row)
        wm = row["throughput"].get("within_match")  # False: hollow and said, never a plain gain; None: fixed thresholds
        wm = False if any(v.get("within_match") is False for v in t) else wm  # a batch size's own images missed it
        note = {True: "", False: " (NOT at matched accuracy)", None: " (fixed thresholds)"}[wm if wm in (True, False) else None]
        ax.plot([v["batch"] for v in t], [v["static_images_per_s"] for v in t], "--s", color=c, mfc="none", label=f"{label}: static")
        ax.plot([v["batch"] for v in t], [v["dynamic_images_per_s"] for v in t], ":o" if wm is False else "-o", color=c,
                mfc="none" if wm is False else c, label=f"{label}: dynamic{note}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (images per predict call)")
    ax.set_ylabel("images / s")
    models = sorted({str(r.get("model")) for r, _ in rows})
    ax.set_title(f"{' / '.join(models)}: throughput, static model vs dynamic cascade")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    return True


def write_outputs(results: list[dict], out: Path, name: str = "bench") -> list[Path]:
    """JSON, Markdown and the plots that apply, replaced together (a failure leaves the earlier set); the files written
    (an older run's plots in ``out`` are left as they are and not listed)."""
    from dvt_edge.bench_latency import plot_latency

    with written_together(out, name) as st:
        atomic_write_json(st / f"{name}.json", results[0] if len(results) == 1 else {"schema": SCHEMA, "schema_version": 1, "merged": results})
        atomic_write(st / f"{name}.md", markdown(results).encode())
        written = [st / f"{name}.json", st / f"{name}.md"]
        plots = [(lambda: plot(results, st / f"{name}_accuracy_vs_latency.png", st / f"{name}_exit_distribution.png"), "accuracy"),
                 (lambda: [st / f"{name}_throughput.png"] if plot_throughput(results, st / f"{name}_throughput.png") else [], "throughput"),
                 (lambda: [st / f"{name}_latency.png"] if plot_latency(results, st / f"{name}_latency.png") else [], "latency")]
        for draw, what in plots:  # a plot a result cannot feed is said and skipped; the JSON and Markdown stand
            try:
                written += draw()
            except (KeyError, TypeError, ValueError, IndexError) as e:
                print(f"warning: the {what} plot was skipped ({type(e).__name__}: {e})", file=sys.stderr)
    return [out / p.name for p in written]


#: what write_outputs may write beside NAME.json
OUTPUTS = (".md", "_accuracy_vs_latency.png", "_exit_distribution.png", "_throughput.png", "_latency.png")
MODES = {None: "full benchmark", "throughput": "fixed-threshold throughput run", "latency": "latency-only run"}


def check_results_folder(out: Path, name: str = "bench", mode: Optional[str] = None, force: bool = False) -> None:
    """Before any work: ``out``'s NAME.json and NAME.md are replaced only when they are an earlier result (a user's own
    file of that name had been replaced), and, for a bench, a result of another mode only with ``force`` (a quick run into
    a full benchmark's folder had replaced it)."""
    import json

    from dvt_runtime.io import check_result_files

    js = out / f"{name}.json"
    check_result_files(js, SCHEMA, [out / f"{name}{suffix}" for suffix in OUTPUTS])
    if name != "bench" or not js.exists() or force:
        return
    try:
        d = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # check_out_path read it as ours a moment ago: a race, not a user's file
    theirs = None if "merged" in d else d.get("mode")
    if theirs != mode:
        raise ValueError(f"--out {out} holds a {MODES.get(theirs, str(theirs))} (made {d.get('created', 'at an unrecorded time')}), "
                         f"which this {MODES[mode]} would replace: choose another --out, or pass --force to replace it")


def kept_over_failures(out: Path, r: dict) -> Optional[str]:
    """Why a run whose every row failed must not replace ``out``'s earlier bench with working rows (None: write it)."""
    import json

    js = out / "bench.json"
    try:
        d = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ran = lambda rows: any(isinstance(x, dict) and x.get("status") == "ok" and x.get("target") != "eager" for x in rows)  # eager: the
    if ran(row for x in (d.get("merged") or [d]) if isinstance(x, dict) for row in x.get("rows") or []) and not ran(r["rows"]):  # reference
        return f"{js} (made {d.get('created', 'at an unrecorded time')}) holds rows that ran: kept, nothing written over it"
    return None


def wrote_line(written: list[Path], out: Path, name: str) -> str:
    """What this run wrote, and any plot of an earlier run in the same folder (kept, named as such)."""
    stale = sorted(p.name for p in out.glob(f"{name}_*.png") if p not in written)
    return (f"wrote {', '.join(p.name for p in written)} in {out}"
            + (f" ({', '.join(stale)} there are from an earlier run)" if stale else ""))


RESULT_KEYS = ("model", "rows", "device", "threads")  # what every result the report renders must hold


def load_results(paths: Sequence[str]) -> list[dict]:
    """Bench results from JSON files (a merged report counts as its results), each checked before anything is written."""
    from dvt_runtime.latency import nulled_nonfinite, read_json

    twice = [p for i, p in enumerate(paths) if Path(p).resolve() in {Path(q).resolve() for q in paths[:i]}]
    if twice:
        raise ValueError(f"{twice[0]} is given twice: each device's results once")
    from dvt_edge.bench_device import DEVICE_SCHEMAS, device_result

    out = []
    for p in paths:
        d = read_json(p, "bench result")
        if isinstance(d, dict) and isinstance(d.get("schema"), str) and d["schema"].startswith(DEVICE_SCHEMAS):
            out.append(device_result(d, p))  # a device with only the runtime: its profile or calibration
            continue
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"{p} is not a dvt-edge bench result (schema {d.get('schema') if isinstance(d, dict) else None!r}): "
                             "give bench.json files (python -m dvt_edge.bench --out DIR), merged reports, and for a device that "
                             "runs only the runtime its profile (dvt-runtime profile / profile import --out) or calibration "
                             "(<bundle>/calibration/<device>.json)")
        v = d.get("schema_version", 0)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{p}: schema_version must be an integer, got {v!r}")
        if v > 1:
            raise ValueError(f"{p} has a newer schema_version; upgrade dvt-edge")
        items = d["merged"] if "merged" in d else [d]
        for i, r in enumerate(items if isinstance(items, list) else [None]):
            missing = [k for k in RESULT_KEYS if not isinstance(r, dict) or k not in r]
            if missing or not isinstance(r["rows"], list):
                raise ValueError(f"{p}: result {i + 1} lacks {missing or ['a list of rows']}: not a complete bench result")
            nulled_nonfinite(r, "", bad := [])  # a report had printed 'nan/0.292' and 'infx' as figures
            if bad:
                raise ValueError(f"{p}: result {i + 1} holds non-finite numbers ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
                                 "edited or damaged; re-run the benchmark")
        out.extend(items)
    return _once_each(out)


def _once_each(results: list[dict]) -> list[dict]:
    """The results with an exact repeat dropped (a merged report given again with what it holds: its sections had doubled),
    and a note when two differ but share a device, model, mode and threads, saying how (other runs, other bundles)."""
    import json

    kept: list[dict] = []
    prints, seen = set(), {}
    for r in results:
        fp = json.dumps(r, sort_keys=True, default=str)
        if fp in prints:
            print(f"note: a result of {_device_label(r)} arrives twice (a merged report given with a result it holds?): kept once",
                  file=sys.stderr)
            continue
        prints.add(fp)
        key = ((r.get("device") or {}).get("device_name"), r.get("model"), r.get("mode"), r.get("threads"), r.get("target"), r.get("precision"))
        if key in seen:
            print(f"note: {key[0]!r} ({key[1]}, {key[3] or '?'} thread(s)) appears twice: {_how_they_differ(seen[key], r)}", file=sys.stderr)
        seen[key] = r
        kept.append(r)
    return kept


def _how_they_differ(a: dict, b: dict) -> str:
    arts = [((x.get("calibration") or x.get("profile") or {}).get("bundle") or {}).get("artifacts") for x in (a, b)]
    if all(arts) and arts[0] != arts[1]:
        return "from different bundles (their artifacts' SHA-256 differ: another checkpoint or export), each section names its own"
    if a.get("checkpoint") != b.get("checkpoint"):
        return f"benchmarks of different checkpoints ({a.get('checkpoint')}, {b.get('checkpoint')})"
    when = [_created(x) for x in (a, b)]
    if all(when) and when[0] != when[1]:
        return f"runs made at {when[0]} and {when[1]}, each section dated"
    return "the same run under two names? each device's results once"


def _created(r: dict) -> str:
    """When a result was made: the bench run's, or the device's calibration or profile ('' when not recorded)."""
    return str(r.get("created") or (r.get("calibration") or {}).get("created") or (r.get("profile") or {}).get("created") or "")
