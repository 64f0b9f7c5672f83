//! Access decisions, browser-attack gates, forwarded-request signatures and limits.

use super::*;

fn policy() -> Access {
    Access::with_tokens(vec![
        Token::from_secret("dashboards", Scope::Read, "read-secret").unwrap(),
        Token::from_sha256(
            "ops",
            Scope::Admin,
            // sha256("admin-secret")
            &hex(&Sha256::digest(b"admin-secret")),
        )
        .unwrap(),
    ])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn scopes_follow_method_and_probes_stay_open() {
    let access = policy();
    let get = Method::GET;
    let post = Method::POST;
    let delete = Method::DELETE;
    assert_eq!(access.decide(&get, "/healthz", None), Ok(None));
    assert_eq!(access.decide(&get, "/readyz", None), Ok(None));
    // The console's page, the API description and its UI hold no data.
    for open in ["/", "/openapi.json", "/docs", "/docs/index.html"] {
        assert_eq!(access.decide(&get, open, None), Ok(None), "{open}");
    }
    assert_eq!(access.decide(&get, "/docsx", None), Err(Denied::Missing));
    assert_eq!(access.decide(&post, "/", None), Err(Denied::Missing));
    assert_eq!(access.decide(&get, "/v1/views", None), Err(Denied::Missing));
    assert_eq!(access.decide(&get, "/metrics", None), Err(Denied::Missing));
    assert_eq!(
        access.decide(&get, "/v1/views", Some("wrong")),
        Err(Denied::Unknown)
    );
    assert_eq!(
        access.decide(&get, "/v1/views", Some("read-secret")),
        Ok(Some("dashboards"))
    );
    assert_eq!(
        access.decide(&post, "/v1/jobs", Some("read-secret")),
        Err(Denied::Scope {
            token: "dashboards".into(),
            needed: Scope::Admin
        })
    );
    // SQL is a query: a read token may post it, a request without a token may not.
    assert_eq!(
        access.decide(&post, "/v1/sql", Some("read-secret")),
        Ok(Some("dashboards"))
    );
    assert_eq!(access.decide(&post, "/v1/sql", None), Err(Denied::Missing));
    assert_eq!(
        access.decide(&delete, "/v1/jobs/x", Some("admin-secret")),
        Ok(Some("ops"))
    );
    assert_eq!(
        access.decide(&get, "/v1/jobs", Some("admin-secret")),
        Ok(Some("ops"))
    );
    // A prefix or extension of a token is not the token.
    assert_eq!(
        access.decide(&get, "/v1/views", Some("read-secre")),
        Err(Denied::Unknown)
    );
    assert_eq!(
        access.decide(&get, "/v1/views", Some("read-secretx")),
        Err(Denied::Unknown)
    );
}

#[test]
fn forwarded_requests_carry_a_signature_not_the_users_token() {
    let key = ForwardKey::new("cluster-secret");
    let now = 1_790_000_000_000;
    let signed = key.sign("POST", "/v1/jobs", now, Some("ops"), b"{}");
    assert!(!signed.contains("admin-secret"));
    assert_eq!(
        key.verify(&signed, "POST", "/v1/jobs", b"{}", now + 1_000),
        Ok(Some("ops".to_owned()))
    );
    // Anything changed, a stale signature, or another cluster's key: refused.
    for (method, target, body, at) in [
        ("DELETE", "/v1/jobs", &b"{}"[..], now),
        ("POST", "/v1/jobs/x", &b"{}"[..], now),
        ("POST", "/v1/jobs", &b"{\"view\":\"v\"}"[..], now),
        ("POST", "/v1/jobs", &b"{}"[..], now + 2 * FORWARD_SKEW_MS),
    ] {
        assert_eq!(
            key.verify(&signed, method, target, body, at),
            Err(Denied::Unknown),
            "{method} {target}"
        );
    }
    assert_eq!(
        ForwardKey::new("other").verify(&signed, "POST", "/v1/jobs", b"{}", now),
        Err(Denied::Unknown)
    );
    assert_eq!(
        key.verify("v1.garbage", "POST", "/v1/jobs", b"{}", now),
        Err(Denied::Unknown)
    );
    // The receiver allows what the named token may do there.
    let access = policy();
    assert_eq!(
        access.decide_as(&Method::POST, "/v1/jobs", Some("ops")),
        Ok(Some("ops".to_owned()))
    );
    assert!(matches!(
        access.decide_as(&Method::POST, "/v1/jobs", Some("dashboards")),
        Err(Denied::Scope { .. })
    ));
    assert_eq!(
        access.decide_as(&Method::POST, "/v1/jobs", None),
        Err(Denied::Missing)
    );
    // The cluster's own request (no token named) may read.
    assert_eq!(
        access.decide_as(&Method::GET, "/v1/internal/partials/v", None),
        Ok(None)
    );
}

#[test]
fn requests_from_other_sites_may_only_read() {
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    };
    let post = Method::POST;
    // curl and scripts send neither header.
    assert!(!cross_site(&post, &headers(&[("host", "localhost:8080")])));
    // The console itself: same origin.
    assert!(!cross_site(
        &post,
        &headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
            ("sec-fetch-site", "same-origin")
        ])
    ));
    assert!(!cross_site(
        &post,
        &headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])
    ));
    // A form on another site posting text/plain.
    assert!(cross_site(
        &post,
        &headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example")
        ])
    ));
    assert!(cross_site(
        &post,
        &headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])
    ));
    assert!(cross_site(
        &Method::DELETE,
        &headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])
    ));
    // Reads are never refused for it.
    assert!(!cross_site(
        &Method::GET,
        &headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])
    ));
}

#[test]
fn only_loopback_names_are_loopback_hosts() {
    for host in [
        "localhost",
        "localhost:8080",
        "LOCALHOST.:80",
        "console.localhost:1",
        "127.0.0.1",
        "127.1.2.3:9",
        "[::1]:8080",
        "::1",
    ] {
        assert!(loopback_host(host), "{host}");
    }
    for host in [
        "evil.example:8080",
        "localhost.evil.example",
        "10.0.0.1:80",
        "[::2]:8080",
        "",
        "127.0.0.1.nip.io",
    ] {
        assert!(!loopback_host(host), "{host}");
    }
}

#[test]
fn connections_leave_room_for_the_store_and_kafka() {
    assert_eq!(connection_cap(None, 1024), 1024 - RESERVED_FILES);
    assert_eq!(connection_cap(None, 1 << 20), 4096);
    assert_eq!(connection_cap(Some(100), 1024), 100);
    assert_eq!(connection_cap(Some(5000), 1024), 1024 - RESERVED_FILES);
    // A tiny limit still serves a few connections.
    assert_eq!(connection_cap(None, 256), 16);
}

#[test]
fn an_open_policy_allows_everything() {
    let access = Access::open();
    assert_eq!(access.decide(&Method::DELETE, "/v1/jobs/x", None), Ok(None));
}

#[test]
fn bearer_headers_are_read_leniently_but_only_as_bearer() {
    let mut headers = HeaderMap::new();
    assert_eq!(bearer(&headers), None);
    headers.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
    assert_eq!(bearer(&headers), Some("abc"));
    headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
    assert_eq!(bearer(&headers), Some("abc"));
    headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
    assert_eq!(bearer(&headers), None);
    headers.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
    assert_eq!(bearer(&headers), None);
}

#[test]
fn digests_must_be_hex_of_the_right_length() {
    assert!(Token::from_sha256("t", Scope::Read, "abc").is_err());
    assert!(Token::from_sha256("t", Scope::Read, &"zz".repeat(32)).is_err());
    assert!(Token::from_sha256("t", Scope::Read, &"Ab".repeat(32)).is_ok());
    assert!(Token::from_secret("t", Scope::Read, "").is_err());
    let debug = format!(
        "{:?}",
        Token::from_secret("t", Scope::Read, "s3cret").unwrap()
    );
    assert!(
        !debug.contains("s3cret") && debug.contains("\"t\""),
        "{debug}"
    );
}
