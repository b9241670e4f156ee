use super::check_method;

#[test]
fn a_method_is_written_as_a_policy_writes_it() {
    assert_eq!(check_method("POST"), Ok(http::Method::POST));
    assert_eq!(check_method("PROPFIND").unwrap().as_str(), "PROPFIND");
    let err = check_method("post").unwrap_err();
    assert!(err.contains("uppercase: POST"), "{err}");
    assert!(check_method("Get").is_err());
    assert!(check_method("G T").is_err());
}
