use super::*;

#[test]
fn lines_wait_for_a_flush_while_batching_and_keep_their_order() {
    start();
    let mut w = BatchedStderr;
    w.write_all(b"first\n").unwrap();
    w.write_all(b"second\n").unwrap();
    let held = BUFFER.lock().unwrap().clone();
    assert!(held.ends_with(b"first\nsecond\n"), "{held:?}");
    flush();
    assert!(BUFFER.lock().unwrap().is_empty());
    stop();
}
