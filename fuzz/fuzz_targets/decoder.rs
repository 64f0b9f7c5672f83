//! Any bytes on the topic: the decoder returns an event or a reason, never panics, and an
//! event it accepts has a time in the supported range.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tandem_shared::event::EventDecoder;
use tandem_shared::schema::{EventSchema, FieldType};

fuzz_target!(|data: &[u8]| {
    let fields = [
        ("city", FieldType::String),
        ("amount", FieldType::Float64),
        ("qty", FieldType::Int64),
        ("paid", FieldType::Bool),
        ("shipped_at", FieldType::Timestamp),
    ]
    .map(|(n, t)| (n.to_owned(), t));
    let Ok(schema) = EventSchema::new("ts", fields, Some("city".into())) else {
        return;
    };
    let decoder = EventDecoder::new(Arc::new(schema));
    if let Ok(event) = decoder.decode(data) {
        assert!(event.time.is_supported());
    }
});
