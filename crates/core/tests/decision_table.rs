//! The decision table, natively. The same table runs as WebAssembly in
//! `wasm_decision.rs`.

mod table;

#[test]
fn every_case_of_the_table_holds() {
    table::assert_every_case_holds();
}

#[test]
fn bucket_fingerprint_is_frozen() {
    table::assert_fingerprint_is_frozen();
}

/// `form` conditions: on the body the glue waited for, decoded as a query
/// is (`+`, `%XX`); without a body they do not match; and which requests
/// are worth waiting for.
#[test]
fn form_conditions_read_the_body_the_glue_waited_for() {
    use graylane_core::decision::{body_wanted, decide};
    use graylane_core::request::Request;
    use graylane_core::split::WeylSequence;
    let rules = graylane_core::config::compile(
        br#"{"limits": {"max_body_bytes": 32}, "services": [
            {"name": "f", "hosts": ["f.test"], "default": "s", "subsets": [
                {"name": "s", "cluster": "f-s"},
                {"name": "c", "cluster": "f-c", "match": [{"form": [{"name": "user id", "exact": "a&b c"}]}]},
                {"name": "n", "cluster": "f-n", "match": [{"headers": [{"name": "x-n", "present": true}],
                    "not": {"form": [{"name": "k", "present": true}]}}]}]},
            {"name": "p", "hosts": ["p.test"], "default": "s", "subsets": [{"name": "s", "cluster": "p-s"}]}]}"#,
    )
    .unwrap();
    assert!(rules.reads_form);
    let form: (&[u8], &[u8]) = (b"content-type", b"application/x-www-form-urlencoded; charset=utf-8");
    let headers = |host: &'static [u8], extra: (&'static [u8], &'static [u8])| {
        vec![(&b":method"[..], &b"POST"[..]), (b":path", b"/"), (b":authority", host), form, extra]
    };
    let cluster = |pairs: &[(&[u8], &[u8])], body: Option<&[u8]>| {
        let request = Request::new(pairs).with_form_body(body);
        decide(&rules, &request, &mut WeylSequence::new(1)).cluster.map(str::to_string)
    };
    let f = headers(b"f.test", (b"x-other", b""));
    assert_eq!(cluster(&f, Some(b"x=1&user+id=a%26b+c")).as_deref(), Some("f-c"));
    assert_eq!(cluster(&f, Some(b"user%20id=a%26b%20c&x")).as_deref(), Some("f-c"));
    assert_eq!(cluster(&f, Some(b"user+id=a%26b")).as_deref(), Some("f-s"));
    assert_eq!(cluster(&f, None).as_deref(), Some("f-s"));
    let n = headers(b"f.test", (b"x-n", b"1"));
    assert_eq!(cluster(&n, None).as_deref(), Some("f-n"));
    assert_eq!(cluster(&n, Some(b"k=")).as_deref(), Some("f-s"));

    let wanted = |pairs: &[(&[u8], &[u8])]| body_wanted(&rules, &Request::new(pairs));
    assert_eq!(wanted(&f), Some(32));
    assert_eq!(wanted(&headers(b"f.test", (b"content-length", b"32"))), Some(32));
    assert_eq!(wanted(&headers(b"f.test", (b"content-length", b"33"))), None);
    assert_eq!(wanted(&headers(b"f.test", (b"content-length", b"0"))), None);
    assert_eq!(wanted(&headers(b"p.test", (b"x-other", b""))), None);
    let json = [(&b":authority"[..], &b"f.test"[..]), (b":path", b"/"), (b"content-type", b"application/json")];
    assert_eq!(wanted(&json), None);
    let without_form = graylane_core::config::compile(br#"{"services": []}"#).unwrap();
    assert_eq!(body_wanted(&without_form, &Request::new(&f)), None);
}
