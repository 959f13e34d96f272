//! Payloads between the shell and the bus.
//!
//! Publishing: raw bytes by default (marked `content-type: text/plain`), or
//! JSON converted to MessagePack with `--json` (what the library's typed
//! `publish` sends, so typed subscribers decode it). Printing: MessagePack
//! as JSON, text as text, anything else as hex.

use anyhow::{Context, Result};
use chorus::PublishOptions;
use serde_json::Value;

/// Header naming how a shell-published payload is encoded.
pub const CONTENT_TYPE: &str = "content-type";

/// The bytes and options for publishing `data` as given on the shell.
pub fn encode(
    data: &str,
    json: bool,
    options: PublishOptions,
) -> Result<(Vec<u8>, PublishOptions)> {
    if json {
        let value: Value =
            serde_json::from_str(data).with_context(|| format!("--json: {data:?} is not JSON"))?;
        let bytes = rmp_serde::to_vec_named(&value).context("cannot encode as MessagePack")?;
        Ok((bytes, options))
    } else {
        Ok((
            data.as_bytes().to_vec(),
            options.header(CONTENT_TYPE, "text/plain"),
        ))
    }
}

/// How a payload was rendered.
#[derive(Debug, PartialEq)]
pub enum Rendered {
    /// A MessagePack value, as JSON.
    Json(Value),
    /// UTF-8 text.
    Text(String),
    /// Anything else, hex-encoded.
    Hex(String),
}

impl Rendered {
    /// Name of the encoding, for JSON output.
    pub fn encoding(&self) -> &'static str {
        match self {
            Rendered::Json(_) => "msgpack",
            Rendered::Text(_) => "text",
            Rendered::Hex(_) => "hex",
        }
    }

    /// The payload as a JSON value (text and hex as strings).
    pub fn to_json(&self) -> Value {
        match self {
            Rendered::Json(v) => v.clone(),
            Rendered::Text(s) | Rendered::Hex(s) => Value::String(s.clone()),
        }
    }
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rendered::Json(v) => write!(f, "{v}"),
            Rendered::Text(s) => f.write_str(s),
            Rendered::Hex(s) => write!(f, "0x{s}"),
        }
    }
}

/// Renders a payload, using the content type when the publisher set one.
pub fn render(payload: &[u8], content_type: Option<&str>) -> Rendered {
    let text = std::str::from_utf8(payload).ok();
    if let (Some("text/plain"), Some(t)) = (content_type, text) {
        return Rendered::Text(t.to_owned());
    }
    if let Some(v) = msgpack(payload) {
        return Rendered::Json(v);
    }
    match text {
        Some(t) => Rendered::Text(t.to_owned()),
        None => Rendered::Hex(payload.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// The payload as one complete MessagePack value, if it is one.
fn msgpack(payload: &[u8]) -> Option<Value> {
    let mut cursor = std::io::Cursor::new(payload);
    let value =
        serde::Deserialize::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor)).ok()?;
    (cursor.position() as usize == payload.len()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_goes_out_as_msgpack_and_comes_back_as_json() {
        let (bytes, opts) =
            encode(r#"{"id": 7, "ok": true}"#, true, PublishOptions::new()).unwrap();
        assert!(opts.headers.is_empty());
        assert_eq!(
            render(&bytes, None),
            Rendered::Json(serde_json::json!({"id": 7, "ok": true}))
        );
    }

    #[test]
    fn text_stays_text_even_when_it_looks_like_msgpack() {
        let (bytes, opts) = encode("5", false, PublishOptions::new()).unwrap();
        let ct = opts.headers.get(CONTENT_TYPE).map(String::as_str);
        assert_eq!(render(&bytes, ct), Rendered::Text("5".into()));
        // Without the header, a lone "5" is the MessagePack integer 53, but
        // "hello" is not one complete value and reads as text.
        assert_eq!(render(b"hello", None), Rendered::Text("hello".into()));
    }

    #[test]
    fn binary_is_hex_and_bad_json_is_an_error() {
        assert_eq!(render(&[0xc1, 0xff], None), Rendered::Hex("c1ff".into()));
        assert!(encode("{nope", true, PublishOptions::new()).is_err());
    }
}
