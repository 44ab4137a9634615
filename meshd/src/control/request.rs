//! The control socket's request line and error answers, pure: what the daemon reads
//! ([`parse_request`]) and the JSON it answers a refused line with ([`error_body`]).

/// A request the control socket serves, as read from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `status` (compact JSON) or `status pretty` (indented): the
    /// [`StatusReport`](super::StatusReport).
    Status {
        /// `status pretty`.
        pretty: bool,
    },
    /// `rotate-key`: a key rotation, answered by a [`RotateOutcome`](super::RotateOutcome).
    RotateKey,
    /// `flows` (the history, then EOF) or `flows follow` (the history, then every new line
    /// until the client closes): one `FlowsResponse` JSON object per line.
    Flows {
        /// `flows follow`.
        follow: bool,
    },
}

/// A request line that names no request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown request {line:?}")]
pub struct UnknownRequest {
    /// The line, trimmed.
    pub line: String,
}

/// Reads a request line (surrounding whitespace ignored). Pure: the daemon's parser.
pub fn parse_request(line: &str) -> Result<Request, UnknownRequest> {
    match line.trim() {
        "status" => Ok(Request::Status { pretty: false }),
        "status pretty" => Ok(Request::Status { pretty: true }),
        "rotate-key" => Ok(Request::RotateKey),
        "flows" => Ok(Request::Flows { follow: false }),
        "flows follow" => Ok(Request::Flows { follow: true }),
        other => Err(UnknownRequest {
            line: other.to_string(),
        }),
    }
}

/// The JSON answer `{"error": message}` (valid JSON whatever the message holds).
pub fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_with_surrounding_whitespace() {
        assert_eq!(
            parse_request("status\n"),
            Ok(Request::Status { pretty: false })
        );
        assert_eq!(
            parse_request("status pretty\n"),
            Ok(Request::Status { pretty: true })
        );
        assert_eq!(parse_request(" rotate-key\r\n"), Ok(Request::RotateKey));
        assert_eq!(
            parse_request("flows\n"),
            Ok(Request::Flows { follow: false })
        );
        assert_eq!(
            parse_request("flows follow\n"),
            Ok(Request::Flows { follow: true })
        );
        assert!(parse_request("flows  follow").is_err());
        assert!(parse_request("flows tail").is_err());
        assert_eq!(
            parse_request("statuses\n"),
            Err(UnknownRequest {
                line: "statuses".into()
            })
        );
    }

    /// The answer to an unknown request was `{"error":"unknown request "foo""}` (the line's
    /// Debug form, quotes and `\u{1}` escapes, pasted into a JSON string): not JSON, so
    /// `meshctl` reported a decoding error instead of the daemon's. Found while writing the
    /// `control_protocol` fuzz target, whose property is that every answer is JSON.
    #[test]
    fn the_answer_to_an_unknown_request_is_json_naming_it() {
        for line in ["foo", "say \"hi\"", "\u{1}\u{0}\\", "\u{200b}x"] {
            let err = parse_request(line).expect_err(line);
            let body = error_body(&err.to_string());
            let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
            let message = v["error"].as_str().expect("an error string");
            assert!(message.starts_with("unknown request "), "{message}");
            assert!(message.contains(&format!("{:?}", line.trim())), "{message}");
        }
    }
}
