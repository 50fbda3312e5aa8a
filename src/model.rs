//! Vocabulary shared by every stage: input sources, the enums of the Avro records,
//! and the borrowed event view the decoder hands to the window stage.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Which input stream a record came from; each has its own Avro record and topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Product,
    Errors,
    Support,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Product, Source::Errors, Source::Support];

    /// The name used in config (`source = "product"`) and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Product => "product",
            Source::Errors => "errors",
            Source::Support => "support",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|src| src.as_str() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `guardrail.v1.Outcome`, in schema symbol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Exposure,
    Started,
    Completed,
    Abandoned,
    Failed,
}

impl Outcome {
    pub const SYMBOLS: [&'static str; 5] =
        ["EXPOSURE", "STARTED", "COMPLETED", "ABANDONED", "FAILED"];
    const ALL: [Outcome; 5] = [
        Outcome::Exposure,
        Outcome::Started,
        Outcome::Completed,
        Outcome::Abandoned,
        Outcome::Failed,
    ];

    pub fn from_index(i: usize) -> Option<Outcome> {
        Self::ALL.get(i).copied()
    }

    pub fn as_str(self) -> &'static str {
        Self::SYMBOLS[self as usize]
    }
}

/// `guardrail.v1.Channel`, in schema symbol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Ticket,
    Chat,
    Call,
    Review,
    Survey,
}

impl Channel {
    pub const SYMBOLS: [&'static str; 5] = ["TICKET", "CHAT", "CALL", "REVIEW", "SURVEY"];
    const ALL: [Channel; 5] = [
        Channel::Ticket,
        Channel::Chat,
        Channel::Call,
        Channel::Review,
        Channel::Survey,
    ];

    pub fn from_index(i: usize) -> Option<Channel> {
        Self::ALL.get(i).copied()
    }

    pub fn as_str(self) -> &'static str {
        Self::SYMBOLS[self as usize]
    }
}

/// `guardrail.v1.Action`: what a command asks the flag platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Pause,
    Rollback,
    Hold,
    Advance,
}

impl Action {
    pub const SYMBOLS: [&'static str; 4] = ["PAUSE", "ROLLBACK", "HOLD", "ADVANCE"];
    pub const ALL: [Action; 4] = [
        Action::Pause,
        Action::Rollback,
        Action::Hold,
        Action::Advance,
    ];

    pub fn as_str(self) -> &'static str {
        Self::SYMBOLS[self as usize]
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `guardrail.v1.Severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const SYMBOLS: [&'static str; 3] = ["INFO", "WARNING", "CRITICAL"];

    pub fn as_str(self) -> &'static str {
        Self::SYMBOLS[self as usize]
    }
}

/// `guardrail.v1.Role`: why a metric appears in the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Guardrail,
    Success,
    Srm,
}

impl Role {
    pub const SYMBOLS: [&'static str; 3] = ["GUARDRAIL", "SUCCESS", "SRM"];
}

/// One `FlagEvaluation` of the envelope, borrowed from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlagRef<'a> {
    pub key: &'a str,
    pub variant: &'a str,
}

/// The fields that only one source has. Borrowed; decoding allocates nothing for
/// up to 4 flags and 8 attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Body<'a> {
    Product {
        journey: &'a str,
        step: Option<&'a str>,
        outcome: Outcome,
        latency_ms: Option<f64>,
        value: Option<f64>,
    },
    Error {
        service: &'a str,
        error_class: &'a str,
        status_code: Option<i32>,
        fatal: bool,
        latency_ms: Option<f64>,
    },
    Support {
        channel: Channel,
        csat: Option<f64>,
        sentiment: Option<f64>,
        tags: SmallVec<[&'a str; 4]>,
    },
}

/// A decoded input record: envelope plus body, borrowing strings from the bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub timestamp: i64,
    pub flags: SmallVec<[FlagRef<'a>; 4]>,
    pub attributes: SmallVec<[(&'a str, &'a str); 8]>,
    pub user_id: Option<&'a str>,
    pub body: Body<'a>,
}

impl<'a> EventRef<'a> {
    pub fn source(&self) -> Source {
        match self.body {
            Body::Product { .. } => Source::Product,
            Body::Error { .. } => Source::Errors,
            Body::Support { .. } => Source::Support,
        }
    }

    /// The value of an attribute; the last one wins if a producer repeated a key.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.attributes
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }
}
