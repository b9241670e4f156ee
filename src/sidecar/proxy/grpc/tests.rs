use super::*;

#[test]
fn statuses_map_to_the_codes_clients_expect() {
    let cases = [
        (403, 7),
        (401, 16),
        (503, 14),
        (502, 14),
        (504, 4),
        (429, 8),
        (413, 8),
        (404, 12),
        (405, 12),
        (400, 13),
        (500, 13),
    ];
    for (http, grpc) in cases {
        let code = Code::for_status(StatusCode::from_u16(http).unwrap());
        assert_eq!(code as u8, grpc, "HTTP {http}");
    }
}

#[test]
fn a_refusal_is_trailers_only() {
    let resp = refusal(StatusCode::FORBIDDEN, "meshguard: access denied 100%\n");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "7");
    assert_eq!(h["grpc-message"], "meshguard: access denied 100%25");
}

#[test]
fn non_ascii_is_percent_encoded() {
    assert_eq!(percent_encode("é\tx"), "%C3%A9%09x");
}

#[test]
fn grpc_requests_are_recognised_by_content_type() {
    let mut h = HeaderMap::new();
    assert!(!is_grpc(&h));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc+proto"),
    );
    assert!(is_grpc(&h));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    assert!(!is_grpc(&h));
}
