//! Input: Avro decoding of the three input records, container files for replay,
//! and (in `kafka`) the consumer that feeds the engine.

pub mod decode;
pub mod ocf;
