//! The UAPI server's side of the protocol under fuzzing: arbitrary bytes as a client's
//! connection ([`uapi_request`]), checked for the properties the device must keep whatever a
//! client sends.

use crate::control::serve_requests;
use crate::device::Core;
use crate::uapi::{parse_get_answer, parse_request, write_set, AnswerError, Request};

/// Feeds `data` to the device's UAPI server as everything one client sent, and to the
/// request parser alone, asserting (panicking otherwise):
///
/// - every answer the server writes is complete (`errno=N` and an empty line) and reads back
///   through the client codec ([`parse_get_answer`]): a `get` answer as a device, anything
///   else as a plain errno;
/// - a request that parses writes back ([`write_set`]) to text that parses to the same
///   request (round trip);
/// - a rejected request's error names what was wrong and repeats no key-sized value of a
///   `*_key` line (a secret key must not reach the log).
///
/// Returns whether the first request parsed.
pub fn uapi_request(data: &[u8]) -> bool {
    serve_connection_bytes(data);
    std::str::from_utf8(data).is_ok_and(parse_first_request)
}

fn serve_connection_bytes(data: &[u8]) {
    let core = Core::new(None, Box::new(|| {}));
    let mut input = data;
    let mut out = Vec::new();
    // An error ends the connection (a line too long or cut, a request too large): fine, as
    // long as what was written before is well formed.
    let _ = serve_requests(&core, &mut input, &mut out);
    let answers = String::from_utf8(out).expect("the UAPI server wrote non-UTF-8");
    if answers.is_empty() {
        return;
    }
    assert!(
        answers.ends_with("\n\n"),
        "the last answer is incomplete: {answers:?}"
    );
    for answer in answers.split_terminator("\n\n") {
        let answer = format!("{answer}\n\n");
        match parse_get_answer(&answer) {
            Ok(_) | Err(AnswerError::Errno(_)) => {}
            Err(err) => panic!("the device's answer {answer:?} does not read back: {err}"),
        }
    }
}

/// The lines of the first request as the server splits them (on `\n` only: a `\r` stays).
fn parse_first_request(text: &str) -> bool {
    let lines: Vec<&str> = text.split('\n').take_while(|l| !l.is_empty()).collect();
    match parse_request(lines.iter().copied()) {
        Ok(Request::Get) => true,
        Ok(Request::Set(req)) => {
            let mut written = String::new();
            write_set(&req, &mut written);
            let again = parse_request(written.lines().take_while(|l| !l.is_empty()));
            assert_eq!(
                again,
                Ok(Request::Set(req)),
                "a parsed set does not round-trip through {written:?}"
            );
            true
        }
        Err(err) => {
            let message = err.to_string();
            assert!(!message.is_empty(), "an empty error for {lines:?}");
            assert!(err.errno() > 0, "error {message} has no errno");
            assert_no_key_in(&message, &lines);
            false
        }
    }
}

/// The error `message` repeats no key of a `*_key` line (64 hex digits, possibly followed by
/// more, such as a CR), unless the same text was also sent as something that is not a key.
/// (Only hex: the fuzzer builds "keys" out of the very error text they are looked for in.)
fn assert_no_key_in(message: &str, lines: &[&str]) {
    let not_keys: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.ends_with("_key"))
        .flat_map(|(k, v)| [k, v])
        .collect();
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.ends_with("_key") || value.len() < 64 || !value.is_char_boundary(64) {
            continue;
        }
        let secret = &value[..64];
        if !secret.bytes().all(|b| b.is_ascii_hexdigit())
            || not_keys.iter().any(|v| v.contains(secret))
        {
            continue;
        }
        assert!(
            !message.contains(secret),
            "the error {message:?} repeats the value of a {key} line"
        );
    }
}
