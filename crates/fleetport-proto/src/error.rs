//! AWS error values and their two wire envelopes: awsJson `{"__type","message"}` and awsQuery
//! `<ErrorResponse>`. Every failure a client can see goes through [`AwsError`].

use http::StatusCode;

/// Who is at fault, as awsQuery's `<Type>` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Sender,
    Receiver,
}

/// An error as AWS puts it on the wire: a code clients match on, a message people read, a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    pub code: String,
    pub message: String,
    pub status: StatusCode,
    pub fault: Fault,
}

impl AwsError {
    /// A client error with HTTP 400, the status nearly every modeled AWS exception uses.
    pub fn client(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_status(code, message, StatusCode::BAD_REQUEST)
    }

    pub fn with_status(
        code: impl Into<String>,
        message: impl Into<String>,
        status: StatusCode,
    ) -> Self {
        let fault = if status.is_server_error() {
            Fault::Receiver
        } else {
            Fault::Sender
        };
        Self {
            code: code.into(),
            message: message.into(),
            status,
            fault,
        }
    }

    /// An internal fault (HTTP 500). The message never carries internal detail; that goes to the log.
    pub fn internal() -> Self {
        Self::with_status(
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
    }

    /// `ServerException` (HTTP 500): the internal fault ECS and ECR model. The detail goes to
    /// the log, never to the client.
    pub fn server_exception() -> Self {
        Self::with_status(
            "ServerException",
            "Service encountered an internal error.",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
    }

    /// `SerializationException`, the awsJson answer to a body that is not the expected JSON.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::client("SerializationException", message)
    }

    /// The awsJson error body. `__type` carries the bare shape name, which every SDK accepts.
    pub fn json_body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "__type": self.code, "message": self.message }))
            .unwrap_or_default()
    }

    /// The awsQuery error document.
    pub fn xml_body(&self, namespace: &str, request_id: &str) -> Vec<u8> {
        let kind = match self.fault {
            Fault::Sender => "Sender",
            Fault::Receiver => "Receiver",
        };
        format!(
            "<ErrorResponse xmlns=\"{}\"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            xml_escape(namespace),
            xml_escape(&self.code),
            xml_escape(&self.message),
            xml_escape(request_id)
        )
        .into_bytes()
    }
}

/// Whether XML 1.0 can carry `c` (its `Char` production).
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes text for XML element content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry these even as character references (`&#x1;` makes the
            // document ill-formed for every parser): stored text that has them shows U+FFFD.
            c if !xml_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_envelope_carries_type_and_message() {
        let e = AwsError::client("ClusterNotFoundException", "Cluster not found.");
        let v: serde_json::Value = serde_json::from_slice(&e.json_body()).unwrap();
        assert_eq!(v["__type"], "ClusterNotFoundException");
        assert_eq!(v["message"], "Cluster not found.");
    }

    #[test]
    fn xml_envelope_escapes_and_classifies() {
        let e = AwsError::internal();
        let body = String::from_utf8(e.xml_body("urn:x", "rid")).unwrap();
        assert!(body.contains("<Type>Receiver</Type>"));
        let e = AwsError::client("ValidationError", "a<b & 'c'");
        let body = String::from_utf8(e.xml_body("urn:x", "rid")).unwrap();
        assert!(body.contains("<Message>a&lt;b &amp; &apos;c&apos;</Message>"));
        assert!(body.contains("<Type>Sender</Type>"));
    }
}
