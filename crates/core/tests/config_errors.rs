//! Every kind of bad configuration is refused with the JSON path of the
//! field and the reason, all refusals at once; nothing panics.

mod table;

use graylane_core::config::{compile, ConfigError};

/// A valid service with one subset changed by `edit` (a JSON fragment
/// spliced in as the subsets list).
fn service_with_subsets(subsets: &str) -> String {
    format!(r#"{{"services":[{{"name":"b","default":"stable","subsets":{subsets}}}]}}"#)
}

fn errors_of(document: &str) -> Vec<ConfigError> {
    match compile(document.as_bytes()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0,
    }
}

/// (what, document, expected path, words the reason must contain)
fn refusals() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let stable = r#"{"name":"stable","cluster":"s"}"#;
    vec![
        ("not JSON", "{services: []}".into(), "$", "not valid JSON: key must be a string at line 1 column 2"),
        ("not an object", "[1]".into(), "$", "must be an object, got a list"),
        ("services missing", "{}".into(), "services", "is required"),
        ("services not a list", r#"{"services":{}}"#.into(), "services", "must be a list, got an object"),
        ("service name missing", r#"{"services":[{"default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].name", "is required"),
        ("affinity at an untrusted edge without keys", r#"{"trust_tag":false,"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c"},{"name":"n","cluster":"n","affinity":true}]}]}"#.into(),
            "services[0].subsets[1].affinity", "give lane_keys in the plugin configuration"),
        ("a lane key too short", r#"{"lane_keys":["short"],"services":[]}"#.into(),
            "lane_keys[0]", "a key of 5 bytes is too short to keep secret: at least 16"),
        ("no lane keys listed", r#"{"lane_keys":[],"services":[]}"#.into(),
            "lane_keys", "must list at least one key"),
        ("a lane cookie with no subset of affinity", r#"{"services":[{"name":"b","default":"a","lane_cookie":{},"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].lane_cookie", "no subset of this service has affinity"),
        ("the lane cookie named as the pin cookie", r#"{"services":[{"name":"b","default":"a","pin_cookie":{"name":"x"},"lane_cookie":{"name":"x"},"subsets":[{"name":"a","cluster":"c","affinity":true}]}]}"#.into(),
            "services[0].lane_cookie.name", "must differ from pin_cookie's name"),
        ("a lane cookie's bad attribute", r#"{"services":[{"name":"b","default":"a","lane_cookie":{"same_site":"lax"},"subsets":[{"name":"a","cluster":"c","affinity":true}]}]}"#.into(),
            "services[0].lane_cookie.same_site", "\"lax\" is not Strict, Lax or None"),
        ("a lane that cannot be a cookie value", r#"{"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c"},{"name":"n","tag":"x;y","cluster":"n","affinity":true}]}]}"#.into(),
            "services[0].subsets[1].affinity", "cannot be a cookie value"),
        ("affinity not a flag", r#"{"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c","affinity":"yes"}]}]}"#.into(),
            "services[0].subsets[0].affinity", "must be"),
        ("a form condition without a match", r#"{"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c","match":[{"form":[{"name":"u"}]}]}]}]}"#.into(),
            "services[0].subsets[0].match[0].form[0]", "needs one of: exact, prefix"),
        ("max_body_bytes over its ceiling", r#"{"limits":{"max_body_bytes":1048576},"services":[]}"#.into(),
            "limits.max_body_bytes", "must be an integer from 1 to 524288"),
        ("unclaimed_status beside a default", r#"{"services":[{"name":"b","default":"a","unclaimed_status":404,"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].unclaimed_status", "applies only to a service without a default"),
        ("unclaimed_status too low", r#"{"services":[{"name":"b","unclaimed_status":99,"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].unclaimed_status", "must be an integer from 200 to 599, got 99"),
        ("unclaimed_status too high", r#"{"services":[{"name":"b","unclaimed_status":600,"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].unclaimed_status", "must be an integer from 200 to 599, got 600"),
        ("unclaimed_status not an integer", r#"{"services":[{"name":"b","unclaimed_status":"404","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].unclaimed_status", "must be an integer from 200 to 599"),
        ("cluster missing", service_with_subsets(r#"[{"name":"stable"}]"#), "services[0].subsets[0].cluster", "is required"),
        ("default names no subset", r#"{"services":[{"name":"b","default":"blue","subsets":[{"name":"green","cluster":"g"}]}]}"#.into(),
            "services[0].default", "names no subset of this service: \"blue\" (subsets: green)"),
        ("repeated subset name", service_with_subsets(&format!("[{stable},{stable}]")),
            "services[0].subsets[1].name", "repeats the name \"stable\""),
        ("repeated tag", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","tag":"t"}},{{"name":"b","cluster":"b","tag":"t"}}]"#)),
            "services[0].subsets[2].tag", "repeats the tag \"t\""),
        ("repeated service name",
            r#"{"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c"}]},{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[1].name", "repeats the service name \"b\""),
        ("weights over 100", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","weight":60}},{{"name":"b","cluster":"b","weight":40.01}}]"#)),
            "services[0].subsets", "sum to 100.01, over 100 (subsets[1] 60 + subsets[2] 40.01)"),
        ("weight above range", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","weight":101}}]"#)),
            "services[0].subsets[1].weight", "must be between 0 and 100 (percent), got 101"),
        ("negative weight", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","weight":-1}}]"#)),
            "services[0].subsets[1].weight", "must be between 0 and 100"),
        ("weight with three decimals", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","weight":0.125}}]"#)),
            "services[0].subsets[1].weight", "at most two decimals, got 0.125"),
        ("weight as a string", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","weight":"5"}}]"#)),
            "services[0].subsets[1].weight", "must be a number of percent, got a string"),
        ("unknown string-match kind", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","equals":"1"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].equals", "unknown string-match kind; expected exactly one of: exact, prefix, suffix, contains, regex, present"),
        ("two match kinds", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"path":{{"prefix":"/a","suffix":"b"}}}}]}}]"#)),
            "services[0].subsets[1].match[0].path", "gives 2 match kinds"),
        ("no match kind", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"cookies":[{{"name":"x"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].cookies[0]", "needs one of: exact, prefix"),
        ("regex does not compile", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","regex":"(a"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].regex", "regex does not compile: regex parse error"),
        ("cookie regex does not compile", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"cookie_regex":"["}}]}}]"#)),
            "services[0].subsets[1].match[0].cookie_regex", "regex does not compile"),
        ("regex too big", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","regex":"\\w{{5000}}"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].regex", "exceeds size limit"),
        ("misspelt field", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","wieght":5}}]"#)),
            "services[0].subsets[1].wieght", "unknown field; expected one of: affinity, bluegreen, canary, cluster, match, mirror, name, set_headers, tag, weight"),
        ("empty match entry", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{}}]}}]"#)),
            "services[0].subsets[1].match[0]", "has no condition"),
        ("bad method", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"method":["GET /"]}}]}}]"#)),
            "services[0].subsets[1].match[0].method[0]", "must be an HTTP method"),
        ("sticky with two keys", r#"{"services":[{"name":"b","default":"a","sticky":{"header":"u","cookie":"u"},"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].sticky", "exactly one of header, cookie or source_ip"),
        ("sticky source_ip false", r#"{"services":[{"name":"b","default":"a","sticky":{"source_ip":false},"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].sticky.source_ip", "must be true"),
        ("wildcard in the middle", r#"{"services":[{"name":"b","hosts":["a.*.com"],"default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].hosts[0]", "'*' is allowed only as a leading '*.'"),
        ("path prefix without slash", r#"{"services":[{"name":"b","path_prefix":"api","default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].path_prefix", "must start with '/'"),
        ("pseudo header as cluster header", r#"{"cluster_header":":path","services":[]}"#.into(),
            "cluster_header", "is not a valid header name"),
        ("same header for cluster and tag", r#"{"cluster_header":"x-a","tag_header":"X-A","services":[]}"#.into(),
            "tag_header", "must differ from cluster_header"),
        ("trust_tag not a boolean", r#"{"trust_tag":"no","services":[]}"#.into(), "trust_tag", "must be true or false, got a string"),
        ("no subsets", r#"{"services":[{"name":"b","default":"a","subsets":[]}]}"#.into(), "services[0].subsets", "at least one subset"),
        ("repeated key", r#"{"services":[{"name":"b","default":"a","name":"c","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].name", "repeats a key of this object"),
        ("repeated cluster key", service_with_subsets(r#"[{"name":"stable","cluster":"c1","cluster":"c3"}]"#),
            "services[0].subsets[0].cluster", "repeats a key of this object"),
        ("repeated top-level key", r#"{"trust_tag":false,"trust_tag":true,"services":[]}"#.into(),
            "trust_tag", "repeats a key"),
        ("bluegreen label", service_with_subsets(r#"[{"name":"stable","cluster":"s","bluegreen":"purple"}]"#),
            "services[0].subsets[0].bluegreen", "must be \"blue\" or \"green\""),
        // What a document may cost (`limits`).
        ("too many services", format!(r#"{{"limits":{{"services":1}},"services":[{0},{0}]}}"#, r#"{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c"}]}"#),
            "services", "services: 2, over the limit of 1 (limits.services)"),
        ("too many subsets", format!(r#"{{"limits":{{"subsets_per_service":1}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a"}}]}}]}}"#),
            "services[0].subsets", "subsets in this service: 2, over the limit of 1 (limits.subsets_per_service)"),
        ("too many match entries", format!(r#"{{"limits":{{"match_entries":2}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"method":["GET"]}},{{"method":["PUT"]}},{{"method":["POST"]}}]}}]}}]}}"#),
            "services[0].subsets[1].match[2]", "match entries in the document: 3, over the limit of 2 (limits.match_entries)"),
        ("too many regexes", format!(r#"{{"limits":{{"regexes":1}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"cookie_regex":"a"}},{{"path":{{"regex":"b"}}}}]}}]}}]}}"#),
            "services[0].subsets[1].match[1].path.regex", "regexes in the document: 2, over the limit of 1 (limits.regexes)"),
        ("regex memory over budget", format!(r#"{{"limits":{{"regex_memory_bytes":1000}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"path":{{"regex":"^/(a|b|c)+[0-9]{{3}}$"}}}}]}}]}}]}}"#),
            "services[0].subsets[1].match[0].path.regex", "(limits.regex_memory_bytes)"),
        ("name too long", r#"{"limits":{"name_bytes":4},"services":[{"name":"b","default":"stable","subsets":[{"name":"stable","tag":"s","cluster":"s"}]}]}"#.into(),
            "services[0].subsets[0].name", "bytes in this name: 6, over the limit of 4 (limits.name_bytes)"),
        ("value too long", format!(r#"{{"limits":{{"value_bytes":3}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","exact":"abcd"}}]}}]}}]}}]}}"#),
            "services[0].subsets[1].match[0].headers[0].exact", "bytes in this value: 4, over the limit of 3 (limits.value_bytes)"),
        ("limit above its ceiling", r#"{"limits":{"services":100000000},"services":[]}"#.into(),
            "limits.services", "must be an integer from 1 to 100000"),
        ("unknown limit", r#"{"limits":{"servces":10},"services":[]}"#.into(),
            "limits.servces", "unknown field; expected one of: document_bytes, in_values, match_entries, max_body_bytes, name_bytes"),
        // Headers and values the plugin writes.
        ("framing header as cluster header", r#"{"cluster_header":"Content-Length","services":[]}"#.into(),
            "cluster_header", "meaning of its own"),
        ("gateway header as tag header", r#"{"tag_header":"x-envoy-upstream-rq-timeout-ms","services":[]}"#.into(),
            "tag_header", "belong to the gateway"),
        ("CR LF in a tag", service_with_subsets("[{\"name\":\"stable\",\"cluster\":\"s\",\"tag\":\"a\\r\\nx-admin: 1\"}]"),
            "services[0].subsets[0].tag", "only visible ASCII is allowed (byte 0x0d)"),
        ("space in a cluster", service_with_subsets(r#"[{"name":"stable","cluster":"s 1"}]"#),
            "services[0].subsets[0].cluster", "only visible ASCII is allowed (byte 0x20)"),
        ("untagged name written as the tag", r#"{"services":[{"name":"b","default":"stable v1","subsets":[{"name":"stable v1","cluster":"s"}]}]}"#.into(),
            "services[0].subsets[0].name", "written into a header"),
        ("cluster outside the allow-list", format!(r#"{{"allowed_clusters":["s"],"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"evil"}}]}}]}}"#),
            "services[0].subsets[1].cluster", "\"evil\" is not in allowed_clusters (s)"),
        ("cluster outside the allowed prefixes", format!(r#"{{"allowed_clusters":["s","outbound|80|*"],"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"outbound|80|v2|b"}},{{"name":"c","cluster":"outbound|8080|admin"}}]}}]}}"#),
            "services[0].subsets[2].cluster", "\"outbound|8080|admin\" is not in allowed_clusters (s, outbound|80|*)"),
        // Mirroring.
        ("mirror without percent", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","mirror":{{}}}}]"#)),
            "services[0].subsets[1].mirror.percent", "is required (percent of the service's other requests to copy here)"),
        ("mirror percent over 100", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","mirror":{{"percent":150}}}}]"#)),
            "services[0].subsets[1].mirror.percent", "must be between 0 and 100"),
        ("mirror method", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","mirror":{{"percent":5,"methods":["GET /"]}}}}]"#)),
            "services[0].subsets[1].mirror.methods[0]", "must be an HTTP method"),
        ("two mirrors", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","mirror":{{"percent":5}}}},{{"name":"c","cluster":"c","mirror":{{"percent":5}}}}]"#)),
            "services[0].subsets[2].mirror", "a second mirror in this service (subsets[1] has one)"),
        ("mirror on the default", service_with_subsets(r#"[{"name":"stable","cluster":"s","mirror":{"percent":5}}]"#),
            "services[0].subsets[0].mirror", "the default subset serves what it would copy"),
        ("mirror header is the cluster header", r#"{"mirror_header":"x-graylane-cluster","services":[]}"#.into(),
            "mirror_header", "must differ from cluster_header and tag_header"),
        ("baggage key with a space", r#"{"tag_baggage_key":"my lane","services":[]}"#.into(),
            "tag_baggage_key", "is not a valid baggage key"),
        ("pin cookie name", r#"{"services":[{"name":"b","default":"a","pin_cookie":{"name":"a;b"},"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].pin_cookie.name", "\"a;b\" is not a cookie name"),
        ("pin cookie same_site", r#"{"services":[{"name":"b","default":"a","pin_cookie":{"same_site":"lax"},"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].pin_cookie.same_site", "is not Strict, Lax or None"),
        ("pin cookie max age", r#"{"services":[{"name":"b","default":"a","pin_cookie":{"max_age_s":0},"subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].pin_cookie.max_age_s", "must be an integer from 1 to"),
        ("pin header is the tag header", r#"{"pin_header":"x-gray-tag","services":[]}"#.into(),
            "pin_header", "must differ from cluster_header, tag_header and mirror_header"),
        ("empty allow-list", r#"{"allowed_clusters":[],"services":[]}"#.into(),
            "allowed_clusters", "must list at least one cluster"),
        // Comparisons, `in`, `invert`, `not` (issue 19).
        ("gt given a string", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"v","gt":"5"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].gt", "must be a number, got a string"),
        ("le without a value", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"query":[{{"name":"v","le":null}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].query[0].le", "must be a number"),
        ("two kinds with a comparison", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"v","gt":1,"lt":2}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0]", "gives 2 match kinds"),
        ("in not a list", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"r","in":"eu"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].in", "must be a list of strings, got a string"),
        ("in empty", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"r","in":[]}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].in", "must list at least one value"),
        ("in with a number", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"cookies":[{{"name":"r","in":["a",1]}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].cookies[0].in[1]", "must be a string, got a number"),
        ("in value too long", format!(r#"{{"limits":{{"value_bytes":3}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","in":["abc","abcd"]}}]}}]}}]}}]}}"#),
            "services[0].subsets[1].match[0].headers[0].in[1]", "bytes in this value: 4, over the limit of 3 (limits.value_bytes)"),
        ("too many in values", format!(r#"{{"limits":{{"in_values":3}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","in":["a","b"]}}]}},{{"headers":[{{"name":"y","in":["c","d"]}}]}}]}}]}}]}}"#),
            "services[0].subsets[1].match[1].headers[0].in", "values of in lists in the document: 4, over the limit of 3 (limits.in_values)"),
        ("invert not a boolean", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"headers":[{{"name":"x","exact":"1","invert":"yes"}}]}}]}}]"#)),
            "services[0].subsets[1].match[0].headers[0].invert", "must be true or false, got a string"),
        ("invert on a path, not a boolean", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"path":{{"prefix":"/a","invert":1}}}}]}}]"#)),
            "services[0].subsets[1].match[0].path.invert", "must be true or false, got a number"),
        ("invert alone", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"path":{{"invert":true}}}}]}}]"#)),
            "services[0].subsets[1].match[0].path", "needs one of: exact, prefix"),
        ("empty not", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"method":["GET"],"not":{{}}}}]}}]"#)),
            "services[0].subsets[1].match[0].not", "has no condition"),
        ("bad condition inside not", service_with_subsets(&format!(r#"[{stable},{{"name":"a","cluster":"a","match":[{{"not":{{"headers":[{{"name":"x","regex":"("}}]}}}}]}}]"#)),
            "services[0].subsets[1].match[0].not.headers[0].regex", "regex does not compile"),
        ("not counts as a match entry", format!(r#"{{"limits":{{"match_entries":1}},"services":[{{"name":"b","default":"stable","subsets":[{stable},{{"name":"a","cluster":"a","match":[{{"method":["GET"],"not":{{"method":["PUT"]}}}}]}}]}}]}}"#),
            "services[0].subsets[1].match[0].not", "match entries in the document: 2, over the limit of 1 (limits.match_entries)"),
        // Service headers (issue 19).
        ("service headers not a list", r#"{"services":[{"name":"b","headers":{"x":"1"},"default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].headers", "must be a list, got an object"),
        ("service header name", r#"{"services":[{"name":"b","headers":[{"name":":path","exact":"/"}],"default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].headers[0].name", "is not a valid header name"),
        ("service header without a kind", r#"{"services":[{"name":"b","headers":[{"name":"x-env"}],"default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].headers[0]", "needs one of: exact"),
        ("service headers empty", r#"{"services":[{"name":"b","headers":[],"default":"a","subsets":[{"name":"a","cluster":"c"}]}]}"#.into(),
            "services[0].headers", "must list at least one condition"),
        // set_headers (issue 19).
        ("set_headers not an object", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":[["x-a","1"]]}]"#),
            "services[0].subsets[0].set_headers", "must be an object, got a list"),
        ("set_headers empty", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{}}]"#),
            "services[0].subsets[0].set_headers", "must set at least one header"),
        ("set_headers with only a note", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"_why":"later"}}]"#),
            "services[0].subsets[0].set_headers", "must set at least one header"),
        ("set_headers names the cluster header", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"X-Graylane-Cluster":"evil"}}]"#),
            "services[0].subsets[0].set_headers.X-Graylane-Cluster", "the cluster or the tag header"),
        ("set_headers names a custom tag header", r#"{"tag_header":"x-lane","services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c","set_headers":{"x-lane":"a"}}]}]}"#.into(),
            "services[0].subsets[0].set_headers.x-lane", "the cluster or the tag header"),
        ("set_headers names a framing header", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"content-length":"0"}}]"#),
            "services[0].subsets[0].set_headers.content-length", "meaning of its own"),
        ("set_headers names a gateway header", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"x-envoy-retry-on":"5xx"}}]"#),
            "services[0].subsets[0].set_headers.x-envoy-retry-on", "belong to the gateway"),
        ("set_headers name not a token", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"x a":"1"}}]"#),
            "services[0].subsets[0].set_headers.x a", "is not a valid header name"),
        ("set_headers twice, other case", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"x-a":"1","X-A":"2"}}]"#),
            "services[0].subsets[0].set_headers.X-A", "set twice"),
        ("set_headers value with CR LF", service_with_subsets("[{\"name\":\"stable\",\"cluster\":\"s\",\"set_headers\":{\"x-a\":\"1\\r\\nx-admin: 1\"}}]"),
            "services[0].subsets[0].set_headers.x-a", "only visible ASCII is allowed (byte 0x0d)"),
        ("set_headers value empty", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"x-a":""}}]"#),
            "services[0].subsets[0].set_headers.x-a", "must not be empty"),
        ("set_headers value not a string", service_with_subsets(r#"[{"name":"stable","cluster":"s","set_headers":{"x-a":1}}]"#),
            "services[0].subsets[0].set_headers.x-a", "must be a string, got a number"),
        ("set_headers value too long", r#"{"limits":{"value_bytes":3},"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c","set_headers":{"x-a":"abcd"}}]}]}"#.into(),
            "services[0].subsets[0].set_headers.x-a", "bytes in this value: 4, over the limit of 3 (limits.value_bytes)"),
        ("too many set_headers", r#"{"limits":{"set_headers":1},"services":[{"name":"b","default":"a","subsets":[{"name":"a","cluster":"c","set_headers":{"x-a":"1","x-b":"2"}}]}]}"#.into(),
            "services[0].subsets[0].set_headers", "headers this subset sets: 2, over the limit of 1 (limits.set_headers)"),
        // Rules with a split (issue 19).
        ("rules not a list", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":{{}},"subsets":[{stable}]}}]}}"#),
            "services[0].rules", "must be a list, got an object"),
        ("rules empty", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[],"subsets":[{stable}]}}]}}"#),
            "services[0].rules", "must list at least one rule"),
        ("rule without match", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"split":[]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].match", "is required"),
        ("rule with an empty match list", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[],"split":[]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].match", "must list at least one match entry"),
        ("rule without split", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].split", "is required"),
        ("rule with a bad match entry", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"headers":[{{"name":"x","gt":"a"}}]}}],"split":[]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].match[0].headers[0].gt", "must be a number"),
        ("misspelt rule field", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[],"weights":[]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].weights", "unknown field; expected one of: match, split"),
        ("split names no subset", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[{{"subset":"canary","weight":5}}]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].split[0].subset", "names no subset of this service: \"canary\" (subsets: stable)"),
        ("split names the default", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[{{"subset":"stable","weight":5}}]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].split[0].subset", "is the service's default"),
        ("split repeats a subset", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[{{"subset":"a","weight":5}},{{"subset":"a","weight":5}}]}}],"subsets":[{stable},{{"name":"a","cluster":"a"}}]}}]}}"#),
            "services[0].rules[0].split[1].subset", "repeats the subset \"a\""),
        ("split weight out of range", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[{{"subset":"a","weight":100.5}}]}}],"subsets":[{stable},{{"name":"a","cluster":"a"}}]}}]}}"#),
            "services[0].rules[0].split[0].weight", "must be between 0 and 100 (percent), got 100.5"),
        ("split weight missing", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[{{"subset":"a"}}]}}],"subsets":[{stable},{{"name":"a","cluster":"a"}}]}}]}}"#),
            "services[0].rules[0].split[0].weight", "is required"),
        ("split weights over 100", format!(r#"{{"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}}],"split":[{{"subset":"a","weight":60}},{{"subset":"c","weight":40.5}}]}}],"subsets":[{stable},{{"name":"a","cluster":"a"}},{{"name":"c","cluster":"c"}}]}}]}}"#),
            "services[0].rules[0].split", "weights of the split sum to 100.5, over 100 (split[0] 60 + split[1] 40.5)"),
        ("rule entries count against the limit", format!(r#"{{"limits":{{"match_entries":1}},"services":[{{"name":"b","default":"stable","rules":[{{"match":[{{"method":["GET"]}},{{"method":["PUT"]}}],"split":[]}}],"subsets":[{stable}]}}]}}"#),
            "services[0].rules[0].match[1]", "match entries in the document: 2, over the limit of 1 (limits.match_entries)"),
    ]
}

#[test]
fn each_bad_configuration_names_its_field_and_reason() {
    let mut failures = Vec::new();
    for (what, document, path, reason) in refusals() {
        let errors = errors_of(&document);
        if !errors
            .iter()
            .any(|e| e.path.to_string() == path && e.refusal.to_string().contains(reason))
        {
            failures.push(format!("{what}: want {path}: …{reason}…; got {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_refusals_are_reported_at_once() {
    let document = r#"{"services":[{"name":"b","default":"x","subsets":[
        {"name":"a","cluster":"a","weight":101},
        {"name":"c","cluster":"c","match":[{"headers":[{"name":"h","regex":"("}]}]}]}]}"#;
    let paths: Vec<String> = errors_of(document)
        .into_iter()
        .map(|e| e.path.to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "services[0].subsets[0].weight",
            "services[0].subsets[1].match[0].headers[0].regex",
            "services[0].default"
        ]
    );
}

#[test]
fn notes_and_extensions_are_allowed() {
    let document = r#"{"_comment":"owner: team-b","services":[{"_why":"ticket 42","name":"b","default":"a",
        "subsets":[{"name":"a","cluster":"c","canary":false,"bluegreen":"Blue"}]}]}"#;
    assert_eq!(errors_of(document), Vec::new());
}

#[test]
fn weights_summing_to_exactly_100_are_accepted() {
    let document = service_with_subsets(
        r#"[{"name":"stable","cluster":"s","weight":100},{"name":"a","cluster":"a","weight":33.33},{"name":"b","cluster":"b","weight":66.67}]"#,
    );
    assert_eq!(errors_of(&document), Vec::new());
}

/// Truncations and byte flips of every table document: each is either
/// compiled or refused with at least one located reason, never a panic.
#[test]
fn damaged_documents_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused = 0;
    for document in [table::CONTRACT, table::EDGE, table::KINDS, table::WEIGHTS, table::EXPRESSIVE] {
        let bytes = document.as_bytes();
        let mut variants: Vec<Vec<u8>> =
            (0..bytes.len()).map(|cut| bytes[..cut].to_vec()).collect();
        for _ in 0..2_000 {
            let mut damaged = bytes.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % damaged.len();
                damaged[at] = b"{}[]\",:0a-9.e\\ \xff"[(next() % 16) as usize];
            }
            variants.push(damaged);
        }
        for variant in variants {
            if let Err(errors) = compile(&variant) {
                assert!(
                    !errors.0.is_empty()
                        && errors
                            .0
                            .iter()
                            .all(|e| e.offset.is_some_and(|at| at as usize <= variant.len())
                                && !e.refusal.to_string().is_empty())
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 1_000,
        "the damage should break most documents, broke {refused}"
    );
}
