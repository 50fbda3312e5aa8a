"""Unit tests of guardrail_evidence.py: the recommendation rule's every branch, the
framing detection, and the proposal edit. Run by tests/notebook.rs
(`python3 -m unittest test_guardrail_evidence` in this directory)."""
import io
import json
import os
import unittest

import fastavro

import guardrail_evidence as ge

METRIC = "checkout_error_rate"
COHORTS = ["platform=ios", "platform=android", "platform=mobile-web"]


def evidence(breached, treatment=0.03, threshold=0.011, status=None, metric=METRIC):
    return {"metric": metric, "role": "GUARDRAIL", "treatment_value": treatment,
            "control_value": 0.01, "threshold": threshold, "relative_change": 2.0,
            "p_value": 0.001 if breached else 0.5, "treatment_samples": 1000,
            "control_samples": 4000, "method": "test", "breached": breached,
            "consecutive_windows": 1 if breached else 0,
            "status": status or ("breached" if breached else "healthy")}


def evaluation(cohort, window, ev, decision=None, state="ramping"):
    return {"flag_key": "f", "cohort": cohort, "window_start": window * 900_000,
            "window_end": (window + 1) * 900_000, "decision": decision, "evidence": ev,
            "late_events": 0, "evaluated_at": (window + 1) * 900_000, "rollout_percent": 20.0,
            "state": state}


def flag_doc(**guardrail):
    g = {"metric": METRIC, "max_relative_increase": 0.1, "windows": 2, "severity": "critical",
         "action": "pause"}
    g.update(guardrail)
    return {"key": "f", "guardrails": [g]}


def cohorts(breaches, windows=4, last_treatment=0.03):
    """Evaluations where `breaches[cohort]` is the set of breached window indexes."""
    out = []
    for c in COHORTS + ["*", "other"]:
        for w in range(windows):
            hit = w in breaches.get(c, set())
            treatment = last_treatment if w == windows - 1 else (0.03 if hit else 0.01)
            out.append(evaluation(c, w, [evidence(hit, treatment=treatment)]))
    return ge.by_cohort(out)


class Rule(unittest.TestCase):
    def test_confined_regression_recommends_a_rollback_override(self):
        ev = cohorts({"platform=mobile-web": {2, 3}, "*": {3}, "other": {1}})
        changes, notes = ge.recommend(ev, flag_doc())
        self.assertEqual([(c["metric"], c["cohort"], c["guardrail"], c["set"]) for c in changes],
                         [(METRIC, "platform=mobile-web", 0,
                           {"severity": "critical", "action": "rollback"})])

    def test_breaches_in_two_cohorts_recommend_nothing(self):
        changes, notes = ge.recommend(cohorts({"platform=mobile-web": {2, 3}, "platform=ios": {1}}),
                                      flag_doc())
        self.assertEqual(changes, [])
        self.assertIn("not confined", notes[0])

    def test_a_recovered_cohort_recommends_nothing(self):
        ev = cohorts({"platform=mobile-web": {1, 2}}, last_treatment=0.005)
        changes, notes = ge.recommend(ev, flag_doc())
        self.assertEqual(changes, [])
        self.assertIn("recovered", notes[0])

    def test_fewer_breaches_than_windows_recommend_nothing(self):
        changes, notes = ge.recommend(cohorts({"platform=mobile-web": {3}}), flag_doc())
        self.assertEqual(changes, [])
        self.assertIn("fewer than", notes[0])
        # ... but a cohort override with windows = 1 makes one breach enough
        doc = flag_doc(cohorts=[{"cohort": "platform=mobile-web", "windows": 1}])
        changes, _ = ge.recommend(cohorts({"platform=mobile-web": {3}}), doc)
        self.assertEqual(len(changes), 1)

    def test_a_warning_guardrail_is_not_escalated(self):
        changes, notes = ge.recommend(cohorts({"platform=mobile-web": {2, 3}}),
                                      flag_doc(severity="warning"))
        self.assertEqual(changes, [])
        self.assertIn("warning", notes[0])

    def test_a_cohort_that_already_rolls_back_needs_nothing(self):
        doc = flag_doc(cohorts=[{"cohort": "platform=mobile-web", "action": "rollback"}])
        changes, notes = ge.recommend(cohorts({"platform=mobile-web": {2, 3}}), doc)
        self.assertEqual(changes, [])
        self.assertIn("already rolls back", notes[0])

    def test_no_other_cohort_judged_shows_no_confinement(self):
        ev = []
        for c in COHORTS:
            for w in range(4):
                hit = c == "platform=mobile-web" and w >= 2
                status = None if c == "platform=mobile-web" else "insufficient"
                ev.append(evaluation(c, w, [evidence(hit, status=status)]))
        changes, notes = ge.recommend(ge.by_cohort(ev), flag_doc())
        self.assertEqual(changes, [])
        self.assertIn("no other cohort was judged", notes[0])

    def test_lower_bounds_recover_upwards(self):
        g = {"metric": "csat", "min": 2.5}
        self.assertTrue(ge.past_bound(evidence(True, treatment=2.0, threshold=2.5), g))
        self.assertFalse(ge.past_bound(evidence(True, treatment=3.0, threshold=2.5), g))
        self.assertTrue(ge.past_bound(evidence(True, treatment=3.0, threshold=2.5), {"max": 2.5}))

    def test_the_override_is_added_or_amended(self):
        doc = {"flags": [flag_doc(cohorts=[{"cohort": "platform=mobile-web", "windows": 3}])],
               "metrics": [{"name": METRIC}]}
        change = {"guardrail": 0, "cohort": "platform=mobile-web",
                  "set": {"severity": "critical", "action": "rollback"}}
        out = ge.apply_changes(doc, "f", [change])
        self.assertEqual(out["flags"][0]["guardrails"][0]["cohorts"],
                         [{"cohort": "platform=mobile-web", "windows": 3, "severity": "critical",
                           "action": "rollback"}])
        self.assertNotIn("severity", doc["flags"][0]["guardrails"][0]["cohorts"][0], "a copy")


class Framing(unittest.TestCase):
    def record(self):
        r = evaluation("platform=ios", 1, [evidence(False)])
        r["evidence"][0].update(ci_lower=None, ci_upper=None)
        return r

    def encode(self, schema_file):
        with open(os.path.join(ge.SCHEMA_DIR, schema_file)) as f:
            schema = fastavro.parse_schema(json.load(f))
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, self.record())
        return ge.single_object_header(schema) + buf.getvalue()

    def test_every_shipped_version_decodes(self):
        schemas = ge.load_schemas()
        for name in ge.EVALUATION_SCHEMAS:
            with self.subTest(name):
                r = ge.decode_evaluation(self.encode(name), schemas)
                self.assertEqual((r["cohort"], r["window_end"]), ("platform=ios", 1_800_000))
                self.assertEqual(r["evidence"][0]["metric"], METRIC)

    def test_the_current_header_is_the_spec_s(self):
        reader, _ = ge.load_schemas()
        self.assertEqual(ge.single_object_header(reader)[2:].hex(), "9b5529a45c403ebb")

    def test_json_is_detected(self):
        r = ge.decode_evaluation(json.dumps(self.record()).encode(), ge.load_schemas())
        self.assertEqual(r["cohort"], "platform=ios")

    def test_an_unknown_fingerprint_is_an_error(self):
        value = b"\xc3\x01" + bytes(8) + b"\x00"
        with self.assertRaisesRegex(ge.Failure, "unknown WindowEvaluation fingerprint"):
            ge.decode_evaluation(value, ge.load_schemas())

    def test_a_republished_window_counts_once(self):
        a = evaluation("platform=ios", 1, [evidence(False)])
        b = dict(a, state="held")
        self.assertEqual(ge.by_cohort([a, b])["platform=ios"], [b])


if __name__ == "__main__":
    unittest.main()
