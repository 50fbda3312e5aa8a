//! Cohort keys: `name=value` pairs of a flag's `cohort_by`, sorted by name, joined
//! with commas (`platform=mobile-web,region=eu`); a missing attribute is `unknown`.
//! `*` (all traffic) is id 0. Beyond `max_cohorts_per_flag` new cohorts fold into `other`.
//! Maps on the hot path use FxHash: their keys are bounded (cohorts are capped, flags
//! and partitions come from config and Kafka), so hash flooding cannot grow them.

use rustc_hash::FxHashMap as HashMap;

use crate::model::EventRef;

pub const ALL: &str = "*";
pub const OTHER: &str = "other";
pub const UNKNOWN: &str = "unknown";

/// Interns the cohorts of one flag; ids are stable for the life of the engine.
#[derive(Debug, Clone)]
pub struct CohortTable {
    attrs: Vec<String>,
    names: Vec<String>,
    ids: HashMap<String, u32>,
    cap: usize,
    other: Option<u32>,
    key: String,
    /// Events folded into `other` because the cap was reached.
    pub overflowed: u64,
}

impl CohortTable {
    pub fn new(cohort_by: &[String], cap: usize) -> CohortTable {
        let mut attrs = cohort_by.to_vec();
        attrs.sort();
        attrs.dedup();
        let mut ids = HashMap::default();
        ids.insert(ALL.to_string(), 0);
        CohortTable {
            attrs,
            names: vec![ALL.to_string()],
            ids,
            cap,
            other: None,
            key: String::new(),
            overflowed: 0,
        }
    }

    /// Whether the flag is judged per cohort at all (besides `*`).
    pub fn has_cohorts(&self) -> bool {
        !self.attrs.is_empty()
    }

    /// The cohort id of an event; allocates only the first time a cohort is seen.
    pub fn lookup(&mut self, ev: &EventRef<'_>) -> u32 {
        self.key.clear();
        for (i, attr) in self.attrs.iter().enumerate() {
            if i > 0 {
                self.key.push(',');
            }
            self.key.push_str(attr);
            self.key.push('=');
            self.key.push_str(ev.attribute(attr).unwrap_or(UNKNOWN));
        }
        if let Some(&id) = self.ids.get(self.key.as_str()) {
            return id;
        }
        let distinct = self.names.len() - 1 - usize::from(self.other.is_some());
        if distinct >= self.cap {
            self.overflowed += 1;
            return self.intern_other();
        }
        self.intern(self.key.clone())
    }

    fn intern_other(&mut self) -> u32 {
        match self.other {
            Some(id) => id,
            None => {
                let id = self.intern(OTHER.to_string());
                self.other = Some(id);
                id
            }
        }
    }

    /// The id of a cohort by name, the cap applied as by [`CohortTable::lookup`]: a new
    /// cohort beyond it folds into `other` (the judge stage merging partials, SPEC §11).
    pub fn admit(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        if name == OTHER {
            return self.intern_other();
        }
        let distinct = self.names.len() - 1 - usize::from(self.other.is_some());
        if distinct >= self.cap {
            return self.intern_other();
        }
        self.intern(name.to_string())
    }

    /// Adds a cohort by name (restart recovery), respecting nothing but uniqueness.
    pub fn intern(&mut self, name: String) -> u32 {
        if let Some(&id) = self.ids.get(&name) {
            return id;
        }
        let id = self.names.len() as u32;
        if name == OTHER {
            self.other = Some(id);
        }
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        id
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or(UNKNOWN, String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Body, Outcome};
    use proptest::prelude::*;
    use smallvec::smallvec;

    fn event<'a>(attrs: &[(&'a str, &'a str)]) -> EventRef<'a> {
        EventRef {
            event_id: "e",
            timestamp: 0,
            flags: smallvec![],
            attributes: attrs.iter().copied().collect(),
            user_id: None,
            body: Body::Product {
                journey: "j",
                step: None,
                outcome: Outcome::Started,
                latency_ms: None,
                value: None,
            },
        }
    }

    #[test]
    fn keys_are_sorted_and_missing_is_unknown() {
        let mut t = CohortTable::new(&["region".into(), "platform".into()], 10);
        let id = t.lookup(&event(&[("region", "eu"), ("platform", "ios")]));
        assert_eq!(t.name(id), "platform=ios,region=eu");
        let id2 = t.lookup(&event(&[("platform", "ios")]));
        assert_eq!(t.name(id2), "platform=ios,region=unknown");
        assert_eq!(t.name(0), "*");
    }

    #[test]
    fn cap_folds_into_other() {
        let mut t = CohortTable::new(&["p".into()], 2);
        let a = t.lookup(&event(&[("p", "a")]));
        let b = t.lookup(&event(&[("p", "b")]));
        let c = t.lookup(&event(&[("p", "c")]));
        let d = t.lookup(&event(&[("p", "d")]));
        assert_ne!(a, b);
        assert_eq!(t.name(c), OTHER);
        assert_eq!(c, d);
        assert_eq!(t.overflowed, 2);
        assert_eq!(t.lookup(&event(&[("p", "a")])), a);
    }

    proptest! {
        #[test]
        fn same_attributes_same_cohort_in_any_order(
            vals in prop::collection::btree_map("[a-d]", "[x-z]{1,3}", 0..4),
            rotate in 0usize..4,
        ) {
            // Keys are unique here, so every order carries the same attributes.
            let mut t = CohortTable::new(&["c".into(), "a".into(), "b".into()], 1000);
            let attrs: Vec<(&str, &str)> = vals.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut rotated = attrs.clone();
            rotated.rotate_left(rotate % attrs.len().max(1));
            rotated.reverse();
            let id1 = t.lookup(&event(&attrs));
            let id2 = t.lookup(&event(&rotated));
            prop_assert_eq!(id1, id2);
            // The key lists exactly the cohort_by attributes, sorted, unknown when absent.
            let expected: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|k| format!("{k}={}", vals.get(*k).map_or(UNKNOWN, String::as_str)))
                .collect();
            prop_assert_eq!(t.name(id1), expected.join(","));
        }
    }
}
