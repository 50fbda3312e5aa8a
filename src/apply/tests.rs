//! The applier on the example policy: idempotency, superseding, approvals, skips.

use super::*;
use crate::model::Severity;
use serde_json::json;

const FLAG: &str = "checkout-redesign";
const MOBILE: &str = "platform=mobile-web";

fn applier(text: &str) -> Applier {
    let (_, policy) = crate::demo::demo_config(None, "localhost:9092", "127.0.0.1:0").unwrap();
    Applier::new(text, &policy).unwrap()
}

fn cmd(id: &str, cohort: &str, action: Action, from: f64, to: f64, window_end: i64) -> FlagCommand {
    FlagCommand {
        command_id: id.into(),
        flag_key: FLAG.into(),
        cohort: cohort.into(),
        action,
        severity: Severity::Info,
        from_percent: from,
        to_percent: to,
        requires_approval: action == Action::Advance,
        reason: "test".into(),
        owner: "payments-squad".into(),
        window_start: window_end - 900_000,
        window_end,
        issued_at: window_end,
        policy_version: "v".into(),
        evidence: vec![],
        watermark_lag_ms: None,
    }
}

fn at(offset: i64) -> Position {
    Position {
        partition: 0,
        offset,
    }
}

fn state(a: &Applier) -> FlagState {
    let v: Value = serde_json::from_str(&a.render()).unwrap();
    FlagState::read(v["flags"][FLAG].as_object().unwrap()).unwrap()
}

fn applied(o: Outcome) -> Applied {
    match o {
        Outcome::Applied(a) => a,
        other => panic!("expected Applied, got {other:?}"),
    }
}

#[test]
fn a_command_creates_the_flag_and_a_redelivery_changes_nothing() {
    let mut a = applier("");
    let pause = cmd("p1", MOBILE, Action::Pause, 20.0, 20.0, 3_600_000);
    let r = applied(a.command(pause.clone(), at(0), 1).unwrap());
    assert_eq!((r.percent, r.action.as_str()), (20.0, "PAUSE"));
    let text = a.take_changed().expect("the file changed");
    assert!(a.take_changed().is_none());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["flags"][FLAG]["state"], json!("ENABLED"));
    assert_eq!(
        v["flags"][FLAG]["variants"],
        json!({"on": true, "off": false})
    );

    // The same command again, here and in a new applier reading the file.
    assert!(matches!(
        a.command(pause.clone(), at(0), 2).unwrap(),
        Outcome::Duplicate(_)
    ));
    assert!(a.take_changed().is_none());
    let mut restarted = applier(&text);
    match restarted.command(pause, at(0), 3).unwrap() {
        Outcome::Duplicate(r2) => assert_eq!(r2, r, "the record as first applied"),
        other => panic!("{other:?}"),
    }
    assert!(restarted.take_changed().is_none());
    assert_eq!(restarted.render(), text);
}

#[test]
fn older_commands_of_a_cohort_are_superseded() {
    let mut a = applier("");
    let mut adv = cmd("a2", "*", Action::Advance, 20.0, 50.0, 7_200_000);
    adv.requires_approval = false;
    applied(a.command(adv, at(1), 1).unwrap());
    let mut older = cmd("a1", "*", Action::Advance, 5.0, 20.0, 3_600_000);
    older.requires_approval = false;
    assert_eq!(a.command(older, at(0), 2).unwrap(), Outcome::Superseded);
    assert_eq!(state(&a).cohorts["*"].percent, 50.0);
}

#[test]
fn an_advance_needing_approval_waits_for_it() {
    let mut a = applier("");
    let adv = cmd("adv", "*", Action::Advance, 20.0, 50.0, 3_600_000);
    assert_eq!(a.command(adv.clone(), at(4), 1).unwrap(), Outcome::Pending);
    assert!(
        a.take_changed().is_none(),
        "nothing applied before approval"
    );
    assert_eq!(a.pending().map(|(_, p)| p).collect::<Vec<_>>(), vec![at(4)]);
    // Read again (a restart before the approval): still one pending.
    assert_eq!(a.command(adv, at(4), 1).unwrap(), Outcome::Pending);
    assert_eq!(a.pending().count(), 1);

    // An approval of something else changes nothing.
    let other = Approval {
        command_id: "other".into(),
        approved_by: "x".into(),
        approved_at: 0,
    };
    assert!(a.approval(other, 2).unwrap().is_none());
    let ok = Approval {
        command_id: "adv".into(),
        approved_by: "alice".into(),
        approved_at: 5,
    };
    let (pos, o) = a.approval(ok, 6).unwrap().expect("applied");
    assert_eq!(pos, at(4));
    let r = applied(o);
    assert_eq!((r.percent, r.approved_by.as_deref()), (50.0, Some("alice")));
    assert_eq!(a.pending().count(), 0);
    assert!(a.take_changed().is_some());
}

#[test]
fn an_approval_read_first_lets_the_advance_apply_at_once() {
    let mut a = applier("");
    let ok = Approval {
        command_id: "adv".into(),
        approved_by: "bob".into(),
        approved_at: 5,
    };
    assert!(a.approval(ok, 1).unwrap().is_none());
    let adv = cmd("adv", "*", Action::Advance, 20.0, 50.0, 3_600_000);
    let r = applied(a.command(adv, at(0), 2).unwrap());
    assert_eq!(r.approved_by.as_deref(), Some("bob"));
}

#[test]
fn a_pause_supersedes_a_pending_advance_and_a_hold_does_not() {
    let mut a = applier("");
    let adv = cmd("adv", MOBILE, Action::Advance, 20.0, 50.0, 3_600_000);
    assert_eq!(a.command(adv, at(0), 1).unwrap(), Outcome::Pending);
    // The engine holds (e.g. the sample ratio, the advance being unapplied): HOLD pins
    // the cohort at what it is served, and the ADVANCE still waits.
    let hold = cmd("hold", MOBILE, Action::Hold, 50.0, 50.0, 5_400_000);
    let r = applied(a.command(hold, at(1), 2).unwrap());
    assert_eq!((r.percent, r.action.as_str()), (20.0, "HOLD"));
    assert_eq!(a.pending().count(), 1);
    // A PAUSE later: the waiting ADVANCE can never apply.
    let pause = cmd("pause", MOBILE, Action::Pause, 50.0, 50.0, 7_200_000);
    applied(a.command(pause, at(2), 3).unwrap());
    assert_eq!(a.pending().count(), 0);
    let ok = Approval {
        command_id: "adv".into(),
        approved_by: "late".into(),
        approved_at: 9,
    };
    assert!(a.approval(ok, 4).unwrap().is_none());
}

#[test]
fn pause_and_rollback_never_wait() {
    let mut a = applier("");
    let mut pause = cmd("p", MOBILE, Action::Pause, 20.0, 20.0, 3_600_000);
    pause.requires_approval = true;
    applied(a.command(pause, at(0), 1).unwrap());
    let mut rb = cmd("r", "platform=ios", Action::Rollback, 20.0, 0.0, 3_600_000);
    rb.requires_approval = true;
    assert_eq!(applied(a.command(rb, at(1), 1).unwrap()).percent, 0.0);
}

#[test]
fn commands_the_file_cannot_express_are_skipped() {
    let mut a = applier("");
    let mut unknown = cmd("u", "*", Action::Pause, 5.0, 5.0, 1);
    unknown.flag_key = "not-configured".into();
    assert!(matches!(
        a.command(unknown, at(0), 1).unwrap(),
        Outcome::Skipped(_)
    ));
    let other = cmd("o", "other", Action::Pause, 5.0, 5.0, 1);
    assert!(matches!(
        a.command(other, at(1), 1).unwrap(),
        Outcome::Skipped(_)
    ));
    assert!(a.take_changed().is_none());
}

#[test]
fn an_existing_flag_without_the_variants_is_an_error() {
    let text = r#"{"flags": {"checkout-redesign": {"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "no"}}}"#;
    let mut a = applier(text);
    let pause = cmd("p", MOBILE, Action::Pause, 20.0, 20.0, 1);
    let err = a.command(pause, at(0), 1).unwrap_err();
    assert!(err.to_string().contains("no variant \"on\""), "{err}");
}
