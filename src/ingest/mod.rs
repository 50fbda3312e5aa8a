//! Input: decoding of input records — guardrail's own Avro records, and (through
//! mappings) Confluent-framed Avro, JSON and OpenTelemetry — container files for
//! replay, and (in `kafka`) the consumer that feeds the engine.

pub mod confluent;
pub mod decode;
pub mod foreign;
pub mod input;
pub mod map;
pub mod ocf;
pub mod otlp;
