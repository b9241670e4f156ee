use super::*;

fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
    let mut req = http::Request::builder().method(method).uri("/ws");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap().into_parts().0
}

#[test]
fn websocket_upgrades_are_recognised() {
    let p = parts(
        Method::GET,
        &[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ],
    );
    let up = check(&p).unwrap().expect("an upgrade");
    assert_eq!(up.protocol(), "websocket");
    let p = parts(
        Method::GET,
        &[("connection", "upgrade"), ("upgrade", "foo/2")],
    );
    assert_eq!(check(&p).unwrap().unwrap().protocol(), "other");
}

#[test]
fn upgrade_without_connection_upgrade_asks_for_nothing() {
    let p = parts(Method::GET, &[("upgrade", "websocket")]);
    assert!(check(&p).unwrap().is_none());
}

#[test]
fn connect_and_h2c_are_refused() {
    let err = check(&parts(Method::CONNECT, &[])).unwrap_err();
    assert!(format!("{err:?}").contains("405"), "{err:?}");
    let p = parts(
        Method::GET,
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ],
    );
    let err = check(&p).unwrap_err();
    assert!(format!("{err:?}").contains("400"), "{err:?}");
}
