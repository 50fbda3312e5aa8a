#!/usr/bin/env python3
"""Per-cohort evidence of one flag, a recommendation, and a policy proposal.

The plain-Python twin of guardrail_evidence.ipynb (the notebook imports this module
and calls the same functions; CI runs this file through tests/notebook.rs).

  1. Read the flag's WindowEvaluation records: from the `guardrail-evaluations` topic
     (--bootstrap, every partition from its beginning to its end, read_committed, with
     confluent-kafka; Avro single-object encoding decoded by fastavro with the schemas
     in schemas/, or JSON when the engine runs with `[output] format = "json"`; each
     record's format is detected), or from the JSON Lines that
     `guardrail replay --evaluations-out FILE` writes (--evaluations FILE).
  2. Plot, per cohort and guardrail metric, treatment vs control vs threshold per
     window, breached windows marked (--plot out.png), and print a per-cohort summary.
  3. Recommend a policy change from the evidence (the rule: `recommend` below).
  4. Write the changed flag as a proposal document and submit it with
     `guardrail policy propose` (--config, --by); print the version and the command a
     reviewer runs to approve it.

One file on purpose (the notebook imports it, CI runs it, a reader copies it): its
sections follow the notebook's steps.

Exit codes: 0 a proposal was made (or written, with --dry-run), 1 no recommendation,
2 usage or runtime errors (unreadable topic, unknown schema, a proposal refused).
"""
import argparse
import copy
import datetime
import io
import json
import os
import shlex
import subprocess
import sys
import tomllib

import fastavro
import fastavro.schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_DIR = os.path.join(ROOT, "schemas")
# The WindowEvaluation versions guardrail ships: the newest is the reader schema, every
# version a writer schema recognised by its fingerprint (SPEC section 1).
EVALUATION_SCHEMAS = [
    "window_evaluation.avsc",
    "history/window_evaluation.v2.avsc",
    "history/window_evaluation.v1.avsc",
]
ALL_TRAFFIC = "*"
OTHER = "other"


class Failure(Exception):
    """A usage or runtime error: printed, exit code 2."""


# ---- 1. Reading ----------------------------------------------------------------------


def single_object_header(schema):
    """C3 01 + the CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form."""
    pcf = fastavro.schema.to_parsing_canonical_form(schema)
    return b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))


def load_schemas(schema_dir=SCHEMA_DIR):
    """(reader schema, {single-object header: writer schema}) of WindowEvaluation."""
    writers = {}
    reader = None
    for name in EVALUATION_SCHEMAS:
        with open(os.path.join(schema_dir, name)) as f:
            schema = fastavro.parse_schema(json.load(f))
        reader = reader or schema
        writers[single_object_header(schema)] = schema
    return reader, writers


def _plain(value):
    """fastavro reads timestamp-millis as datetimes; JSON output has epoch millis."""
    if isinstance(value, datetime.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_evaluation(value, schemas):
    """One record value -> dict with the Avro field names: Avro single-object (detected
    by its C3 01 marker, the writer schema found by fingerprint) or JSON."""
    reader, writers = schemas
    if value[:2] == b"\xc3\x01":
        writer = writers.get(value[:10])
        if writer is None:
            known = ", ".join(h[2:].hex() for h in writers)
            raise Failure(f"unknown WindowEvaluation fingerprint {value[2:10].hex()} "
                          f"(header bytes); this checkout knows {known}")
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), writer, reader)
        return _plain(record)
    try:
        return json.loads(value)
    except ValueError as e:
        raise Failure(f"neither Avro single-object nor JSON: {value[:16].hex()}...: {e}")


def read_topic(bootstrap, topic, flag, schemas=None, timeout=30.0):
    """Every evaluation of `flag` on `topic`: each partition from its low watermark to
    its end (partition EOF), read_committed, without committing offsets."""
    try:
        from confluent_kafka import Consumer, KafkaError, TopicPartition
    except ImportError as e:
        raise Failure(f"reading Kafka needs confluent-kafka (pip install confluent-kafka): {e}")
    schemas = schemas or load_schemas()
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"guardrail-evidence-{os.getpid()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise Failure(f"topic {topic} not found on {bootstrap}"
                          + (f": {meta.error}" if meta is not None and meta.error else ""))
        pending, assign = set(), []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                pending.add(p)
                assign.append(TopicPartition(topic, p, low))
        consumer.assign(assign)
        out = []
        while pending:
            msg = consumer.poll(timeout)
            if msg is None:
                raise Failure(f"timed out reading {topic}; partitions {sorted(pending)} not at their end")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise Failure(f"reading {topic}: {msg.error()}")
            if msg.key() is not None and msg.key() != flag.encode():
                continue  # records are keyed by flag: skip the others undecoded
            record = decode_evaluation(msg.value(), schemas)
            if record.get("flag_key") == flag:
                out.append(record)
        return out
    finally:
        consumer.close()


def read_jsonl(path, flag):
    """Evaluations of `flag` from `guardrail replay --evaluations-out` (JSON Lines)."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise Failure(f"{path}:{n}: not JSON: {e}")
            if record.get("flag_key") == flag:
                out.append(record)
    return out


# ---- 2. Evidence, summary, plot --------------------------------------------------------


def by_cohort(evaluations):
    """{cohort: [evaluation, ...] in window order}; a window re-published after a crash
    (at-least-once delivery) counts once, its newest record kept."""
    cells = {}
    for e in evaluations:
        cells[(e["cohort"], e["window_start"])] = e
    out = {}
    for (cohort, _), e in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.setdefault(cohort, []).append(e)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != ALL_TRAFFIC, kv[0])))


def guardrail_metrics(evaluations):
    """The guardrail metrics in the evidence, in first-seen order."""
    seen = []
    for e in evaluations:
        for m in e["evidence"]:
            if m["role"] == "GUARDRAIL" and m["metric"] not in seen:
                seen.append(m["metric"])
    return seen


def evidence_of(evaluation, metric):
    """The guardrail evidence on `metric` in one evaluation (the breached one first when
    two guardrails share a metric), or None."""
    found = [m for m in evaluation["evidence"] if m["role"] == "GUARDRAIL" and m["metric"] == metric]
    found.sort(key=lambda m: not m["breached"])
    return found[0] if found else None


def summarize(cohorts):
    """Per cohort: windows, decisions, the state and percent after the last window, and
    per guardrail metric the breached / judged windows and the last relative change."""
    metrics = guardrail_metrics([e for evs in cohorts.values() for e in evs])
    rows = []
    for cohort, evs in cohorts.items():
        last = evs[-1]
        row = {
            "cohort": cohort,
            "windows": len(evs),
            "first_window_start": evs[0]["window_start"],
            "last_window_end": last["window_end"],
            "state": last.get("state"),
            "rollout_percent": last.get("rollout_percent"),
            "decisions": [{"action": e["decision"], "window_end": e["window_end"]}
                          for e in evs if e.get("decision")],
            "guardrails": {},
        }
        for metric in metrics:
            ev = [evidence_of(e, metric) for e in evs]
            ev = [m for m in ev if m is not None]
            judged = [m for m in ev if m.get("status") != "insufficient"]
            row["guardrails"][metric] = {
                "breached_windows": sum(1 for m in ev if m["breached"]),
                "judged_windows": len(judged),
                "last_status": ev[-1].get("status") if ev else None,
                "last_relative_change": ev[-1].get("relative_change") if ev else None,
            }
        rows.append(row)
    return rows


def format_summary(rows):
    """The summary as a text table, one line per cohort."""
    metrics = list(rows[0]["guardrails"]) if rows else []
    head = ["cohort", "windows", "state", "percent", "decisions"] + metrics
    lines = [head]
    for r in rows:
        decisions = ", ".join(f"{d['action']}@{_utc(d['window_end'])}" for d in r["decisions"]) or "-"
        cells = [r["cohort"], str(r["windows"]), r["state"] or "-",
                 "-" if r["rollout_percent"] is None else f"{r['rollout_percent']:g}%", decisions]
        for m in metrics:
            g = r["guardrails"][m]
            rel = g["last_relative_change"]
            rel = "" if rel is None else f", last {rel:+.1%}"
            cells.append(f"{g['breached_windows']}/{g['judged_windows']} breached{rel}")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _utc(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%m-%d %H:%M")


def plot(cohorts, flag, path):
    """One PNG: a row per cohort, a column per guardrail metric; treatment, control and
    threshold per window (by window end), breached windows marked with a red cross,
    windows with too few samples hollow, decisions as labelled vertical lines."""
    # The Agg canvas directly, without pyplot: no global backend is switched, so this
    # renders the same in a script, in CI and inside a notebook with an inline backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metrics = guardrail_metrics([e for evs in cohorts.values() for e in evs])
    if not cohorts or not metrics:
        raise Failure(f"no guardrail evidence for {flag} to plot")
    nrows, ncols = len(cohorts), len(metrics)
    fig = Figure(figsize=(5.5 * ncols, 2.6 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for i, (cohort, evs) in enumerate(cohorts.items()):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            pts = [(datetime.datetime.fromtimestamp(e["window_end"] / 1000, datetime.timezone.utc),
                    evidence_of(e, metric)) for e in evs]
            pts = [(t, m) for t, m in pts if m is not None]
            t = [p[0] for p in pts]
            ax.plot(t, [_num(m["treatment_value"]) for _, m in pts], "o-", color="tab:orange",
                    markersize=4)
            ax.plot(t, [_num(m.get("control_value")) for _, m in pts], "o-", color="tab:blue",
                    markersize=4)
            ax.plot(t, [_num(m.get("threshold")) for _, m in pts], "--", color="tab:gray")
            thin = [(x, m) for x, m in pts if m.get("status") == "insufficient"]
            ax.scatter([x for x, _ in thin], [_num(m["treatment_value"]) for _, m in thin],
                       facecolors="white", edgecolors="tab:orange", zorder=3)
            bad = [(x, m) for x, m in pts if m["breached"]]
            ax.scatter([x for x, _ in bad], [_num(m["treatment_value"]) for _, m in bad],
                       marker="X", s=80, color="tab:red", zorder=4)
            for e in evs:
                if e.get("decision"):
                    x = datetime.datetime.fromtimestamp(e["window_end"] / 1000, datetime.timezone.utc)
                    ax.axvline(x, color="tab:red" if e["decision"] in ("PAUSE", "ROLLBACK") else "tab:green",
                               alpha=0.5)
                    ax.annotate(e["decision"], (x, 1), xycoords=("data", "axes fraction"),
                                ha="right", va="top", fontsize=7, rotation=90)
            ax.set_title(f"{cohort} · {metric}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles = [
        Line2D([], [], marker="o", color="tab:orange", markersize=4, label="treatment"),
        Line2D([], [], marker="o", color="tab:blue", markersize=4, label="control"),
        Line2D([], [], linestyle="--", color="tab:gray", label="threshold"),
        Line2D([], [], marker="X", color="tab:red", linestyle="", markersize=8, label="breached"),
        Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="tab:orange",
               linestyle="", label="too few samples"),
        Line2D([], [], color="tab:red", alpha=0.5, label="PAUSE / ROLLBACK"),
        Line2D([], [], color="tab:green", alpha=0.5, label="HOLD / ADVANCE"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
               bbox_to_anchor=(0.5, 0.985), frameon=False)
    fig.suptitle(f"{flag}: guardrail evidence per cohort and window (window end, UTC)", y=0.998)
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    fig.savefig(path, dpi=90)
    return path


def _num(v):
    return float("nan") if v is None else v


# ---- 3. Recommendation -----------------------------------------------------------------
#
# The rule (the notebook explains it at length):
#
# A guardrail metric M, a cohort C (a named cohort: not "*", which mixes every cohort,
# nor "other", the overflow bucket). C is *regressed* on M when
#   (a) M breached in C in at least `windows` windows (the guardrail's own streak
#       length, C's override's when it has one): enough to stop by the policy's own
#       standard, and
#   (b) C has not recovered: in its most recent judged window the estimate of M is still
#       past the threshold (the engine's own condition for a breach to go on; that one
#       window need not be significant on its own).
# The regression is *confined* to C when at least one other named cohort was judged on M
# (had enough samples in some window) and no other named cohort breached M in any window.
#
# Recommendation for a confined regression on a critical guardrail (one that stops: its
# action for C is a pause): a per-cohort override on that guardrail for C with
# severity = "critical", action = "rollback". Why: a PAUSE pins C at the percent it has,
# so C's treated users keep the regressed experience until someone acts; the evidence
# says the harm is specific to C, so the remedy is to serve C the control automatically,
# while every other cohort keeps the policy it has (it still ramps). Nothing is
# recommended when breaches are spread over several cohorts (a flag-wide problem: the
# engine's decisions stand, and a person should look), when C has recovered, when the
# guardrail is a warning (HOLD) one (its tier is not escalated from one episode), or
# when C already rolls back.


def regressions(cohorts, flag_doc):
    """[(metric, cohort, breached windows, needed)] of confined regressions; and notes
    explaining every metric that did not qualify."""
    found, notes = [], []
    for metric in guardrail_metrics([e for evs in cohorts.values() for e in evs]):
        guardrail = _guardrail_for(flag_doc, metric)
        named = {c: evs for c, evs in cohorts.items() if c not in (ALL_TRAFFIC, OTHER)}
        breached, judged = {}, set()
        for cohort, evs in named.items():
            ev = [m for m in (evidence_of(e, metric) for e in evs) if m is not None]
            n = sum(1 for m in ev if m["breached"])
            if any(m.get("status") != "insufficient" for m in ev):
                judged.add(cohort)
            if n:
                recent = [m for m in ev if m.get("status") != "insufficient"]
                breached[cohort] = (n, bool(recent) and past_bound(recent[-1], guardrail))
        if not breached:
            continue
        if len(breached) > 1:
            notes.append(f"{metric}: breaches in {len(breached)} cohorts ({', '.join(sorted(breached))}): "
                         "not confined to one cohort, no per-cohort change recommended")
            continue
        (cohort, (n, still)), = breached.items()
        needed = _setting(guardrail, cohort, "windows", 1) if guardrail else 1
        if not judged - {cohort}:
            notes.append(f"{metric}: {cohort} breached but no other cohort was judged: confinement not shown")
        elif n < needed:
            notes.append(f"{metric}: {cohort} breached {n} window(s), fewer than the guardrail's windows = {needed}")
        elif not still:
            notes.append(f"{metric}: {cohort} breached {n} window(s) but has recovered: its latest "
                         "judged window's estimate is within the threshold")
        else:
            found.append((metric, cohort, n, needed))
    return found, notes


def past_bound(evidence, guardrail):
    """Whether a window's own estimate is past the threshold it was judged against (the
    engine's condition for a breach to go on, SPEC section 5.1): above it for a
    guardrail with upper bounds (max, max_relative_increase), below it for one with
    lower bounds only (min, max_relative_decrease)."""
    t, x = evidence.get("threshold"), evidence.get("treatment_value")
    if t is None or x is None:
        return evidence["breached"]
    lower_only = guardrail is not None and not ({"max", "max_relative_increase"} & set(guardrail)) \
        and bool({"min", "max_relative_decrease"} & set(guardrail))
    return x < t if lower_only else x > t


def recommend(cohorts, flag_doc):
    """The recommended changes as dicts {metric, cohort, guardrail (index), set, why},
    and notes on what was considered and not recommended."""
    found, notes = regressions(cohorts, flag_doc)
    changes = []
    for metric, cohort, n, needed in found:
        index = _guardrail_index(flag_doc, metric)
        if index is None:
            notes.append(f"{metric}: in the evidence but no guardrail of the flag uses it now")
            continue
        g = flag_doc["guardrails"][index]
        if _setting(g, cohort, "severity", "warning") != "critical":
            notes.append(f"{metric}: {cohort} regressed on a warning guardrail (HOLD): its tier "
                         "is not escalated from the evidence of one episode")
            continue
        if _setting(g, cohort, "action", "pause") == "rollback":
            notes.append(f"{metric}: {cohort} already rolls back on this guardrail")
            continue
        others = sorted(c for c in cohorts if c not in (ALL_TRAFFIC, OTHER, cohort))
        changes.append({
            "metric": metric,
            "cohort": cohort,
            "guardrail": index,
            "set": {"severity": "critical", "action": "rollback"},
            "why": (f"{metric} breached in {n} windows of {cohort} (the guardrail acts after {needed}) "
                    f"and is still past its threshold in the latest window, while {', '.join(others)} "
                    "never breached it: a regression confined to one cohort; roll that cohort "
                    "back instead of pausing it at its percent"),
        })
    return changes, notes


def _guardrail_index(flag_doc, metric):
    gs = flag_doc.get("guardrails", [])
    on = [i for i, g in enumerate(gs) if g.get("metric") == metric]
    critical = [i for i in on if gs[i].get("severity", "warning") == "critical"]
    return (critical or on or [None])[0]


def _guardrail_for(flag_doc, metric):
    i = _guardrail_index(flag_doc, metric)
    return None if i is None else flag_doc["guardrails"][i]


def _setting(guardrail, cohort, key, default):
    """A guardrail's setting for a cohort: its override's, else the guardrail's."""
    for o in guardrail.get("cohorts", []):
        if o.get("cohort") == cohort and key in o:
            return o[key]
    return guardrail.get(key, default)


def apply_changes(document, flag, changes):
    """A copy of the policy document with the changes as [[flags.guardrails.cohorts]]
    overrides (an existing override of the cohort is amended, the rest kept)."""
    doc = copy.deepcopy(document)
    flag_doc = flag_document(doc, flag)
    for c in changes:
        g = flag_doc["guardrails"][c["guardrail"]]
        overrides = g.setdefault("cohorts", [])
        mine = next((o for o in overrides if o.get("cohort") == c["cohort"]), None)
        if mine is None:
            mine = {"cohort": c["cohort"]}
            overrides.append(mine)
        mine.update(c["set"])
    return doc


def flag_document(document, flag):
    for f in document.get("flags", []):
        if f.get("key") == flag:
            return f
    raise Failure(f"flag {flag} is not in the policy document")


# ---- 4. The proposal -------------------------------------------------------------------


def _guardrail_cli(guardrail_bin, args):
    try:
        return subprocess.run([guardrail_bin, *args], capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise Failure(f"running {guardrail_bin}: {e} (set --guardrail-bin or GUARDRAIL_BIN)")


def policy_show(guardrail_bin, config, flag):
    """The flag's active policy record (`guardrail policy show`)."""
    r = _guardrail_cli(guardrail_bin, ["policy", "show", "--config", config, flag])
    if r.returncode != 0:
        raise Failure(f"guardrail policy show {flag} failed ({r.returncode}):\n{r.stderr.strip()}")
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise Failure(f"guardrail policy show printed no JSON record: {e}\n{r.stdout[:500]}")


def document_from_config(config, flag):
    """The flag's document read from the TOML config file itself, in the structure
    `policy show` prints: what `guardrail replay --config` judged with."""
    with open(config, "rb") as f:
        parsed = tomllib.load(f)
    flags = [f for f in parsed.get("flags", []) if f.get("key") == flag]
    if not flags:
        raise Failure(f"flag {flag} is not in {config}")
    used = {g["metric"] for g in flags[0].get("guardrails", []) + flags[0].get("success", [])}
    metrics = [m for m in parsed.get("metrics", []) if m.get("name") in used]
    return json.loads(json.dumps({"flags": flags, "metrics": metrics}, default=str))


def propose(guardrail_bin, config, proposal_path, by, evidence, comment, flag):
    """`guardrail policy propose`: its JSON line for `flag` ({flag, version, status, ...})."""
    r = _guardrail_cli(guardrail_bin, ["policy", "propose", "--config", config, "--file", proposal_path,
                                       "--by", by, "--evidence", evidence, "--comment", comment])
    if r.returncode != 0:
        raise Failure(f"guardrail policy propose refused the proposal ({r.returncode}):\n{r.stderr.strip()}")
    for line in r.stdout.splitlines():
        try:
            out = json.loads(line)
        except ValueError:
            continue
        if out.get("flag") == flag:
            return out
    raise Failure(f"guardrail policy propose printed no line for {flag}:\n{r.stdout}")


def approve_command(config, flag, version):
    return " ".join(shlex.quote(a) for a in
                    ["guardrail", "policy", "approve", "--config", config, flag, version, "--by"]) + " REVIEWER"


# ---- the command line ------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bootstrap", help="Kafka bootstrap servers, HOST:PORT")
    src.add_argument("--evaluations", help="JSON Lines from guardrail replay --evaluations-out")
    ap.add_argument("--topic", default="guardrail-evaluations")
    ap.add_argument("--flag", required=True)
    ap.add_argument("--plot", default="guardrail-evidence.png", help="the PNG to write")
    ap.add_argument("--config", required=True,
                    help="guardrail's config (policy show / propose; the policy itself with "
                         "--policy-from config)")
    ap.add_argument("--guardrail-bin", default=os.environ.get("GUARDRAIL_BIN", "guardrail"))
    ap.add_argument("--by", default=os.environ.get("USER", "notebook"), help="who proposes")
    ap.add_argument("--evidence", help="evidence link for the proposal (default: the plot's path)")
    ap.add_argument("--comment", help="proposal comment (default: the recommendation's reason)")
    ap.add_argument("--proposal", help="where to write the proposal (default: beside the plot)")
    ap.add_argument("--policy-from", choices=["cluster", "config"],
                    help="the flag's current document: the active policy (guardrail policy "
                         "show; the default with --bootstrap) or the config file itself (the "
                         "default with --evaluations: the policy replay ran with)")
    ap.add_argument("--dry-run", action="store_true", help="write the proposal, do not submit it")
    ap.add_argument("--json-out", help="also write the summary and recommendation as JSON here")
    return ap.parse_args(argv)


def current_document(args):
    """(the policy document to change, where it came from), per --policy-from."""
    policy_from = args.policy_from or ("cluster" if args.bootstrap else "config")
    if policy_from == "config":
        return document_from_config(args.config, args.flag), args.config
    record = policy_show(args.guardrail_bin, args.config, args.flag)
    return record["document"], f"active version {record.get('version')}"


def run(args):
    if args.bootstrap:
        evaluations = read_topic(args.bootstrap, args.topic, args.flag)
        source = f"{args.topic} on {args.bootstrap}"
    else:
        evaluations = read_jsonl(args.evaluations, args.flag)
        source = args.evaluations
    if not evaluations:
        raise Failure(f"no evaluations of {args.flag} in {source}")
    cohorts = by_cohort(evaluations)
    rows = summarize(cohorts)
    print(f"{args.flag}: {len(evaluations)} evaluations, {len(cohorts)} cohorts, from {source}")
    print(format_summary(rows))
    plot(cohorts, args.flag, args.plot)
    print(f"plot: {args.plot}")
    result = {"flag": args.flag, "summary": rows, "plot": os.path.abspath(args.plot)}

    document, based_on = current_document(args)
    changes, notes = recommend(cohorts, flag_document(document, args.flag))
    for n in notes:
        print(f"note: {n}")
    result.update(based_on=based_on, recommendation=changes, notes=notes)
    code = 1
    if not changes:
        print("recommendation: none (the policy fits the evidence)")
    else:
        for c in changes:
            print(f"recommendation: guardrail {c['metric']} for {c['cohort']}: "
                  + ", ".join(f"{k} = {json.dumps(v)}" for k, v in c["set"].items()))
            print(f"  why: {c['why']}")
        proposal = apply_changes(document, args.flag, changes)
        path = args.proposal or os.path.join(os.path.dirname(os.path.abspath(args.plot)),
                                             f"proposal-{args.flag}.json")
        with open(path, "w") as f:
            json.dump(proposal, f, indent=2)
            f.write("\n")
        print(f"proposal: {path} (based on {based_on})")
        result["proposal_file"] = path
        if args.dry_run:
            print("dry run: not submitted")
        else:
            comment = args.comment or "; ".join(c["why"] for c in changes)
            out = propose(args.guardrail_bin, args.config, path, args.by,
                          args.evidence or os.path.abspath(args.plot), comment, args.flag)
            result["proposed"] = out
            print(f"proposed: {args.flag} version {out.get('version')} ({out.get('status')}), by {args.by}")
            print(f"to approve: {approve_command(args.config, args.flag, out.get('version'))}")
        code = 0
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return code


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except Failure as e:
        print(f"guardrail_evidence: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
