use super::check::{budget, remove_dot_segments, request_target, resolve_redirect, Hop, Next};
use super::grpc::{
    code_name, first_message, health_check_request, judge, serving_status, serving_status_name,
};
use super::*;
use crate::kube::contract::Scheme;
use http::HeaderMap;

fn hop(target: &str) -> Hop {
    Hop {
        scheme: Scheme::Http,
        port: 8080,
        target: target.into(),
        host: "custom.example".into(),
    }
}

fn follow(from: &str, location: &str) -> Hop {
    match resolve_redirect(&hop(from), location) {
        Ok(Next::Follow(h)) => h,
        other => panic!("{location:?} from {from:?}: {other:?}"),
    }
}

#[test]
fn budget_leaves_a_margin() {
    assert_eq!(budget(1), Duration::from_millis(900));
    assert_eq!(budget(2), Duration::from_millis(1800));
    assert_eq!(budget(10), Duration::from_secs(9));
    assert_eq!(budget(0), Duration::from_millis(500));
}

#[test]
fn request_targets_are_encoded_like_go() {
    let t = |p: &str| request_target(p).map(|u| u.to_string());
    assert_eq!(t("/healthz").as_deref(), Ok("/healthz"));
    assert_eq!(t("/q?a=1&b=%20").as_deref(), Ok("/q?a=1&b=%20"));
    assert_eq!(t("/a b#frag").as_deref(), Ok("/a%20b"));
    assert_eq!(t("/é").as_deref(), Ok("/%C3%A9"));
    assert_eq!(t("rel").as_deref(), Ok("/rel"));
    assert_eq!(t("/x\r\nHost: evil").as_deref(), Ok("/x%0D%0AHost:%20evil"));
}

#[test]
fn relative_redirects_stay_on_the_same_port_and_host_header() {
    let h = follow("/a/b?x=1", "/healthz");
    assert_eq!(
        (h.port, h.target.as_str(), h.host.as_str()),
        (8080, "/healthz", "custom.example")
    );
    assert_eq!(follow("/a/b?x=1", "c").target, "/a/c");
    assert_eq!(follow("/a/b?x=1", "../c?y").target, "/c?y");
    assert_eq!(follow("/a/b?x=1", "?y=2").target, "/a/b?y=2");
    assert_eq!(follow("/a/b", "/x/./y/../z#f").target, "/x/z");
}

#[test]
fn absolute_redirects_follow_loopback_only() {
    let h = follow("/", "http://127.0.0.1:9000/ready?x");
    assert_eq!(
        (h.scheme, h.port, h.target.as_str(), h.host.as_str()),
        (Scheme::Http, 9000, "/ready?x", "127.0.0.1:9000")
    );
    let h = follow("/", "https://[::1]/secure");
    assert_eq!(
        (h.scheme, h.port, h.host.as_str()),
        (Scheme::Https, 443, "[::1]")
    );
    let h = follow("/", "//127.0.0.1:81");
    assert_eq!(
        (h.scheme, h.port, h.target.as_str()),
        (Scheme::Http, 81, "/")
    );
    for elsewhere in [
        "http://example.com/",
        "https://10.0.0.1:8080/x",
        "http://localhost:8080/",
        "http://custom.example/",
        "ftp://example.com/",
    ] {
        assert_eq!(
            resolve_redirect(&hop("/"), elsewhere),
            Ok(Next::Elsewhere),
            "{elsewhere}"
        );
    }
    assert!(resolve_redirect(&hop("/"), "ftp://127.0.0.1/x").is_err());
    assert!(resolve_redirect(&hop("/"), "http://[bad/").is_err());
}

#[test]
fn dot_segments() {
    assert_eq!(remove_dot_segments("/"), "/");
    assert_eq!(remove_dot_segments("/a/.."), "/");
    assert_eq!(remove_dot_segments("/../../a"), "/a");
    assert_eq!(remove_dot_segments("/a/./b/"), "/a/b/");
    assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
}

#[test]
fn health_check_request_bytes() {
    assert_eq!(&health_check_request("").unwrap()[..], &[0, 0, 0, 0, 0]);
    assert_eq!(
        &health_check_request("svc").unwrap()[..],
        &[0, 0, 0, 0, 5, 0x0A, 3, b's', b'v', b'c']
    );
    let long = "x".repeat(200);
    let frame = health_check_request(&long).unwrap();
    assert_eq!(&frame[..8], &[0, 0, 0, 0, 203, 0x0A, 0xC8, 0x01]);
}

#[test]
fn health_check_responses() {
    assert_eq!(serving_status(&[0x08, 0x01]), Ok(1));
    assert_eq!(serving_status(&[]), Ok(0));
    // Unknown fields of every wire type are skipped.
    let msg = [
        0x12, 2, b'h', b'i', 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0x08, 0x02, 0x20,
        0x96, 0x01,
    ];
    assert_eq!(serving_status(&msg), Ok(2));
    assert!(serving_status(&[0x08]).is_err());
    assert!(serving_status(&[0x12, 5, 1]).is_err());
    assert!(serving_status(&[0x0B]).is_err());

    assert_eq!(
        first_message(&[0, 0, 0, 0, 2, 0x08, 0x01, 0xFF]),
        Ok(&[0x08, 0x01][..])
    );
    assert!(first_message(&[]).is_err());
    assert!(first_message(&[1, 0, 0, 0, 0]).is_err());
    assert!(first_message(&[0, 0, 0, 0, 3, 0x08]).is_err());

    let ok_trailers = || {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t
    };
    let none = HeaderMap::new();
    assert_eq!(
        judge(&none, &ok_trailers(), &[0, 0, 0, 0, 2, 0x08, 0x01]),
        Ok(())
    );
    assert_eq!(
        judge(&none, &ok_trailers(), &[0, 0, 0, 0, 2, 0x08, 0x02]),
        Err("grpc status NOT_SERVING".into())
    );
    assert_eq!(
        judge(&none, &ok_trailers(), &[0, 0, 0, 0, 0]),
        Err("grpc status UNKNOWN".into())
    );
    let mut only = HeaderMap::new();
    only.insert("grpc-status", "12".parse().unwrap());
    assert_eq!(
        judge(&only, &none, &[]),
        Err("grpc error UNIMPLEMENTED".into())
    );
    assert!(judge(&none, &none, &[0, 0, 0, 0, 2, 0x08, 0x01]).is_err());
    assert_eq!(code_name(99), "code 99");
    assert_eq!(serving_status_name(3), "SERVICE_UNKNOWN");
}

const ONE: &str = r#"{"app/liveness":{"original":{"tcpSocket":{"port":80}},"forward":{"type":"tcp","port":80,"timeoutSeconds":1}}}"#;

#[test]
fn probe_env_parsing() {
    assert!(probes_from_vars(None, None).unwrap().is_none());
    let (addr, probes) = probes_from_vars(Some("[::]:15020"), Some(ONE))
        .unwrap()
        .unwrap();
    assert_eq!(addr, "[::]:15020".parse().unwrap());
    assert_eq!(probes.len(), 1);
    let (_, empty) = probes_from_vars(Some("0.0.0.0:15020"), Some("{}"))
        .unwrap()
        .unwrap();
    assert!(empty.is_empty());

    let err = |l, p| probes_from_vars(l, p).unwrap_err().to_string();
    assert!(err(Some("[::]:15020"), None)
        .contains("MESHGUARD_PROBE_LISTEN is set but MESHGUARD_APP_PROBES is not"));
    assert!(err(None, Some("{}"))
        .contains("MESHGUARD_APP_PROBES is set but MESHGUARD_PROBE_LISTEN is not"));
    assert!(err(Some("15020"), Some("{}")).contains("MESHGUARD_PROBE_LISTEN=\"15020\""));
    assert!(err(Some("[::]:15020"), Some("")).contains("MESHGUARD_APP_PROBES is empty"));
    assert!(err(Some("[::]:15020"), Some("{not json"))
        .starts_with("MESHGUARD_APP_PROBES is not a valid app probe map"));
    assert!(err(
        Some("[::]:15020"),
        Some(r#"{"a/b":{"original":{},"forward":{"type":"exec"}}}"#)
    )
    .starts_with("MESHGUARD_APP_PROBES"));
}

#[test]
fn shutdown_listen_must_be_loopback() {
    assert_eq!(shutdown_listen_from_var(None).unwrap(), None);
    for ok in [
        "127.0.0.1:15021",
        "[::1]:15021",
        "127.0.0.2:1",
        "[::ffff:127.0.0.1]:15021",
    ] {
        assert!(
            shutdown_listen_from_var(Some(ok)).unwrap().is_some(),
            "{ok}"
        );
    }
    for bad in ["0.0.0.0:15021", "[::]:15021", "10.0.0.1:15021"] {
        let e = shutdown_listen_from_var(Some(bad)).unwrap_err().to_string();
        assert!(
            e.contains("must listen on a loopback address"),
            "{bad}: {e}"
        );
    }
    assert!(shutdown_listen_from_var(Some("localhost:15021")).is_err());
}
