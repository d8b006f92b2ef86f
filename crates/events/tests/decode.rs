//! Strict decoding: every catalog type round-trips; every kind of bad input is a typed error.

use steward_events::{samples, DecodeError, Event, EventData, MAX_EVENT_BYTES};

fn sample_json() -> serde_json::Value {
    let event = Event::new("test", samples::all("gitea").remove(1));
    serde_json::from_slice(&event.encode().expect("encode")).expect("json")
}

fn decode_value(v: &serde_json::Value) -> Result<Event, DecodeError> {
    Event::decode(&serde_json::to_vec(v).expect("to_vec"))
}

#[test]
fn every_type_round_trips_with_all_fields() {
    let samples = samples::all("gitea");
    assert_eq!(samples.len(), EventData::ALL_TYPES.len(), "one sample per catalog type");
    let cause = Event::new("cli", samples[0].clone());
    for data in samples {
        let event = Event::caused_by(&cause, "steward-test/host", data);
        let decoded = Event::decode(&event.encode().expect("encode")).expect("decode");
        assert_eq!(decoded, event);
        assert_eq!(decoded.correlation_id, cause.correlation_id);
        assert_eq!(decoded.causation_id, Some(cause.id));
    }
}

#[test]
fn envelope_has_cloudevents_attributes() {
    let v = sample_json();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "image.updated");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(v["subject"], "gitea");
    assert_eq!(v["data"]["container"], "gitea");
    let id = v["id"].as_str().expect("id");
    assert_eq!(uuid::Uuid::parse_str(id).expect("uuid").get_version_num(), 7);
    assert_eq!(v["correlationid"], v["id"], "a new flow correlates to itself");
    assert!(v.get("causationid").is_none());
}

#[test]
fn unknown_type_is_typed_error() {
    let mut v = sample_json();
    v["type"] = "image.exploded".into();
    assert!(matches!(decode_value(&v), Err(DecodeError::UnknownType(t)) if t == "image.exploded"));
}

#[test]
fn wrong_specversion_is_typed_error() {
    let mut v = sample_json();
    v["specversion"] = "0.3".into();
    assert!(matches!(decode_value(&v), Err(DecodeError::SpecVersion(s)) if s == "0.3"));
}

#[test]
fn missing_payload_field_names_the_field() {
    let mut v = sample_json();
    v["data"].as_object_mut().expect("object").remove("new_digest");
    match decode_value(&v) {
        Err(e @ DecodeError::Data { event_type: "image.updated", .. }) => {
            assert!(e.to_string().contains("new_digest"), "{e}")
        }
        other => panic!("expected Data error, got {other:?}"),
    }
}

#[test]
fn missing_envelope_attribute_is_envelope_error() {
    for attr in ["id", "source", "time", "correlationid", "type", "specversion"] {
        let mut v = sample_json();
        v.as_object_mut().expect("object").remove(attr);
        match decode_value(&v) {
            Err(e @ DecodeError::Envelope(_)) => assert!(e.to_string().contains(attr), "{e}"),
            other => panic!("{attr}: expected Envelope error, got {other:?}"),
        }
    }
}

#[test]
fn missing_data_and_bad_digest_and_content_type_are_errors() {
    let mut v = sample_json();
    v.as_object_mut().expect("object").remove("data");
    assert!(matches!(decode_value(&v), Err(DecodeError::MissingData("image.updated"))));

    let mut v = sample_json();
    v["data"]["new_digest"] = "latest".into();
    assert!(matches!(decode_value(&v), Err(DecodeError::Data { .. })));

    let mut v = sample_json();
    v["datacontenttype"] = "text/xml".into();
    assert!(matches!(decode_value(&v), Err(DecodeError::ContentType(_))));
}

#[test]
fn oversized_message_is_refused_before_parsing() {
    let big = vec![b' '; MAX_EVENT_BYTES + 1];
    assert!(matches!(Event::decode(&big), Err(DecodeError::TooLarge { .. })));

    let mut data = samples::all("gitea")
        .into_iter()
        .find(|d| matches!(d, EventData::UpdateRolledBack(_)))
        .expect("an update.rolled_back sample");
    if let EventData::UpdateRolledBack(p) = &mut data {
        p.log_tail = vec!["x".repeat(1024); 1100];
    }
    assert!(Event::new("t", data).encode().is_err(), "encoder refuses what decoders would");
}

#[test]
fn garbage_never_panics() {
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{".to_vec(),
        vec![0xff, 0xfe, 0x00],
        "[".repeat(10_000).into_bytes(),
        br#"{"specversion":"1.0","data":{}}"#.to_vec(),
    ];
    for input in inputs {
        assert!(Event::decode(&input).is_err());
    }
}

#[test]
fn unknown_extra_fields_are_tolerated_for_rolling_upgrades() {
    let mut v = sample_json();
    v["traceparent"] = "00-abc-def-01".into();
    v["data"]["added_in_a_later_version"] = 42.into();
    assert!(decode_value(&v).is_ok());
}

/// `docs/events.md` is what the generator prints, byte for byte: prose written into the file
/// by hand would be lost on the next regeneration, so it belongs in the catalog.
#[test]
fn docs_events_md_is_exactly_the_generated_catalog() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let doc = std::fs::read_to_string(path).expect("docs/events.md");
    let generated = steward_events::catalog::markdown();
    if doc != generated {
        let (file, gen) = (doc.split('\n'), generated.split('\n'));
        let line = file.clone().zip(gen.clone()).position(|(a, b)| a != b);
        let line = line.unwrap_or(file.clone().count().min(gen.clone().count()));
        panic!(
            "docs/events.md is not what the catalog generates (first difference at line {}: \
             file {:?}, generated {:?}). Put prose in crates/events/src/catalog (an entry's doc \
             comment, or catalog/markdown.rs), then regenerate: `{}`",
            line + 1,
            file.clone().nth(line).unwrap_or("<end of file>"),
            gen.clone().nth(line).unwrap_or("<end of file>"),
            steward_events::REGENERATE_EVENTS_MD,
        );
    }
}

#[test]
fn the_generated_catalog_describes_and_shows_every_type_once() {
    let doc = steward_events::catalog::markdown();
    assert_eq!(doc, steward_events::catalog::markdown(), "the same text on every call");
    for t in EventData::ALL_TYPES {
        let heading = format!("\n### `{t}`\n");
        assert_eq!(doc.matches(&heading).count(), 1, "{t}: one heading");
        let section = doc.split(&heading).nth(1).and_then(|s| s.split("\n### ").next());
        let section = section.expect("a section");
        let description = EventData::description(t).expect("in the catalog");
        let first = description.lines().next().unwrap_or_default().trim();
        assert!(!first.is_empty() && section.contains(first), "{t}: its description");
        assert_eq!(section.matches("```json").count(), 1, "{t}: one example");
    }
    assert_eq!(EventData::description("image.exploded"), None);
}

#[test]
fn the_host_attribute_round_trips_is_optional_and_checked() {
    // An event from before hosts (no attribute) decodes, with no host.
    let old = sample_json();
    assert!(old.get("host").is_none(), "no host, no attribute: old readers see what they saw");
    assert_eq!(decode_value(&old).expect("old event").host, None);

    let event = Event::new("steward-watcher/vps1", samples::all("gitea").remove(1))
        .with_host(Some("vps1".into()));
    let bytes = event.encode().expect("encode");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["host"], "vps1", "a CloudEvents extension attribute");
    assert_eq!(Event::decode(&bytes).expect("decode"), event);

    for bad in ["VPS1", "a.b", "a*", ">", "", " x", "-x"] {
        let mut v = v.clone();
        v["host"] = bad.into();
        let err = decode_value(&v).expect_err(bad);
        assert!(matches!(err, DecodeError::Host { .. }), "{bad:?}: {err}");
    }
    let mut v = v;
    v["host"] = 7.into();
    assert!(matches!(decode_value(&v), Err(DecodeError::Envelope(_))));
}

#[test]
fn trace_context_round_trips_and_is_optional() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut v = sample_json();
    v["traceparent"] = traceparent.into();
    v["tracestate"] = "rojo=00f067aa0ba902b7".into();
    let event = decode_value(&v).expect("decodes");
    assert_eq!(event.trace.traceparent.as_deref(), Some(traceparent));
    assert_eq!(event.trace.tracestate.as_deref(), Some("rojo=00f067aa0ba902b7"));
    let again = Event::decode(&event.encode().expect("encodes")).expect("decodes");
    assert_eq!(again.trace, event.trace);
    // Caused events stay in the cause's trace until a span replaces it.
    let next = Event::caused_by(&event, "t", event.data.clone());
    assert_eq!(next.trace, event.trace);

    // An event from before trace context (or published with tracing off) has none, and
    // writes none.
    let plain = decode_value(&sample_json()).expect("decodes");
    assert!(plain.trace.is_empty());
    let text = String::from_utf8(plain.encode().expect("encodes")).expect("utf-8");
    assert!(!text.contains("traceparent") && !text.contains("tracestate"), "{text}");
}

#[test]
fn a_hostile_trace_context_never_costs_the_event() {
    // Wrong JSON types, overlong and malformed values: the event decodes without them (or
    // with the text, for the tracing setup to refuse as a parent), never an error.
    for (traceparent, tracestate) in [
        (serde_json::json!(42), serde_json::json!({"a": 1})),
        (serde_json::json!(null), serde_json::json!([1, 2])),
        (serde_json::json!("x".repeat(100_000)), serde_json::json!("y".repeat(513))),
        (serde_json::json!("00-zz-\u{0}-01"), serde_json::json!(true)),
    ] {
        let mut v = sample_json();
        v["traceparent"] = traceparent.clone();
        v["tracestate"] = tracestate;
        let event = decode_value(&v).unwrap_or_else(|e| panic!("{traceparent:.40}: {e}"));
        assert!(event.trace.tracestate.is_none());
        assert!(event.trace.traceparent.as_ref().is_none_or(|t| t.len() <= 512));
    }
    // What JSON values cannot even express: nesting deeper than a parser's limit and a lone
    // surrogate escape, written as raw text.
    let text = serde_json::to_string(&sample_json()).expect("json");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (traceparent, tracestate) in [(deep.as_str(), "\"\\ud800\""), ("\"\\udfff\"", "7")] {
        let hostile = text.replacen(
            '{',
            &format!("{{\"traceparent\":{traceparent},\"tracestate\":{tracestate},"),
            1,
        );
        let event = Event::decode(hostile.as_bytes())
            .unwrap_or_else(|e| panic!("{:.40} / {tracestate}: {e}", traceparent));
        assert!(event.trace.is_empty(), "{:?}", event.trace);
    }
}
