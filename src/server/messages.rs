//! Wire-protocol pieces the server handles itself: framing, the per-connection renaming of
//! prepared statements and portals, and the messages it writes on its own.

use bytes::{BufMut, BytesMut};

/// Reads a NUL-terminated string at `at`; returns it and the offset after its NUL.
fn cstr(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = body.get(at..)?.iter().position(|&b| b == 0)?;
    Some((&body[at..at + len], at + len + 1))
}

/// The messages in `bytes`, each as its type, body and whole bytes; a message cut short at the
/// end is given as far as it goes.
pub(crate) fn frames(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 5 > bytes.len() {
            return None;
        }
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let end = (at + 1 + len.max(4)).min(bytes.len());
        let frame = (bytes[at], &bytes[at + 5..end], &bytes[at..end]);
        at = end;
        Some(frame)
    })
}

/// Appends a message of type `tag` with `body`.
pub(crate) fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

/// A frontend message with its name fields renamed for one connection.
///
/// Statement and portal names live in the one shared session; each connection's names get the
/// connection's prefix so that two clients may both prepare `s1`. The unnamed statement and
/// portal stay unnamed: the unnamed portal lasts only to the end of its transaction, which one
/// connection owns whole, and the server puts a client's unnamed statement back when another's
/// replaced it (see [`unnamed_statement`]).
pub(crate) fn rename(tag: u8, body: &[u8], prefix: &str, out: &mut BytesMut) -> Option<RenameEffect> {
    // Written straight into `out`, its length filled in at the end: no copy of the message.
    let start = out.len();
    out.reserve(5 + body.len() + 2 * prefix.len());
    out.put_u8(tag);
    out.put_u32(0);
    let named = |out: &mut BytesMut, name: &[u8]| {
        if !name.is_empty() {
            out.put_slice(prefix.as_bytes());
            out.put_slice(name);
        }
        out.put_u8(0);
    };
    let parsed = (|| {
        Some(match tag {
            b'P' => {
                let (name, rest) = cstr(body, 0)?;
                named(out, name);
                out.put_slice(&body[rest..]);
                (!name.is_empty()).then(|| RenameEffect::Prepared(name.to_vec()))
            }
            b'B' => {
                let (portal, at) = cstr(body, 0)?;
                let (statement, rest) = cstr(body, at)?;
                named(out, portal);
                named(out, statement);
                out.put_slice(&body[rest..]);
                None
            }
            b'D' | b'C' => {
                let kind = *body.first()?;
                let (name, _) = cstr(body, 1)?;
                out.put_u8(kind);
                named(out, name);
                (tag == b'C' && kind == b'S' && !name.is_empty()).then(|| RenameEffect::Closed(name.to_vec()))
            }
            b'E' => {
                let (portal, rest) = cstr(body, 0)?;
                named(out, portal);
                out.put_slice(&body[rest..]);
                None
            }
            _ => {
                out.put_slice(body);
                None
            }
        })
    })();
    let Some(effect) = parsed else {
        out.truncate(start);
        return None;
    };
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    Some(effect.unwrap_or(RenameEffect::None))
}

/// What a frontend message does with the session's unnamed prepared statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnnamedStatement {
    /// Nothing.
    Untouched,
    /// Parse of the unnamed statement: it now holds this client's.
    Parsed,
    /// Bind or Describe of the unnamed statement: it must hold this client's.
    Used,
    /// A simple Query, which drops it, or a Close of it.
    Dropped,
}

/// What the frontend message `tag`/`body` does with the unnamed statement.
pub(crate) fn unnamed_statement(tag: u8, body: &[u8]) -> UnnamedStatement {
    let first_empty = |at: usize| body.get(at) == Some(&0);
    match tag {
        b'P' if first_empty(0) => UnnamedStatement::Parsed,
        b'B' => match cstr(body, 0) {
            Some((_, at)) if first_empty(at) => UnnamedStatement::Used,
            _ => UnnamedStatement::Untouched,
        },
        b'D' if body.first() == Some(&b'S') && first_empty(1) => UnnamedStatement::Used,
        b'C' if body.first() == Some(&b'S') && first_empty(1) => UnnamedStatement::Dropped,
        b'Q' => UnnamedStatement::Dropped,
        _ => UnnamedStatement::Untouched,
    }
}

/// The prepared statement (client name; empty for the unnamed one) that the Parse `body`
/// defines or the Bind `body` uses.
pub(crate) fn statement_named(tag: u8, body: &[u8]) -> Option<&[u8]> {
    let (name, _) = match tag {
        b'P' => cstr(body, 0)?,
        b'B' => cstr(body, cstr(body, 0)?.1)?,
        _ => return None,
    };
    Some(name)
}

/// What a renamed message does to the connection's set of prepared statements.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RenameEffect {
    None,
    Prepared(Vec<u8>),
    Closed(Vec<u8>),
}

/// Removes the connection's prefix from names quoted in error and notice texts.
/// Most replies name nothing: they come back as they are, uncopied.
pub(crate) fn unrename_reply<'r>(reply: &'r [u8], prefix: &str) -> std::borrow::Cow<'r, [u8]> {
    let prefix_bytes = prefix.as_bytes();
    let quoted = |w: &[u8]| w[0] == b'"' && &w[1..] == prefix_bytes;
    if !reply.windows(prefix_bytes.len() + 1).any(quoted) {
        return std::borrow::Cow::Borrowed(reply);
    }
    let needle = format!("\"{prefix}");
    let mut out = BytesMut::with_capacity(reply.len());
    let mut at = 0;
    while at + 5 <= reply.len() {
        let tag = reply[at];
        let len = u32::from_be_bytes(reply[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let end = (at + 1 + len).min(reply.len());
        let body = &reply[at + 5..end];
        if tag == b'E' || tag == b'N' {
            let text = String::from_utf8_lossy(body).replace(&needle, "\"");
            put_message(&mut out, tag, text.as_bytes());
        } else {
            out.put_slice(&reply[at..end]);
        }
        at = end;
    }
    std::borrow::Cow::Owned(out.to_vec())
}

/// `reply` as the answer to one command with CommandComplete `tag`: its errors, notices and
/// ParameterStatus messages, then `tag` unless there was an error, then its last ReadyForQuery.
pub(crate) fn answer_as(reply: &[u8], tag: &str) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(64);
    let mut ready = None;
    let mut failed = false;
    for (kind, _, whole) in frames(reply) {
        match kind {
            b'E' | b'N' | b'S' => {
                failed |= kind == b'E';
                out.put_slice(whole);
            }
            b'Z' => ready = Some(whole),
            _ => {}
        }
    }
    if !failed {
        put_message(&mut out, b'C', &[tag.as_bytes(), b"\0"].concat());
    }
    if let Some(ready) = ready {
        out.put_slice(ready);
    }
    out.to_vec()
}

/// The transaction status of the last ReadyForQuery in `reply`, if it has one.
pub(crate) fn ready_status(reply: &[u8]) -> Option<u8> {
    frames(reply)
        .filter(|(kind, body, _)| *kind == b'Z' && body.len() == 1)
        .last()
        .map(|(_, body, _)| body[0])
}

/// An ErrorResponse with severity, SQLSTATE and message.
pub(crate) fn error_response(severity: &str, code: &str, message: &str) -> BytesMut {
    let mut body = Vec::new();
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = BytesMut::new();
    put_message(&mut out, b'E', &body);
    out
}

/// Keeps the ParameterStatus messages of a startup reply (what the server tells every client).
pub(crate) fn parameter_statuses(startup_reply: &[u8]) -> Vec<u8> {
    frames(startup_reply)
        .filter(|(kind, _, _)| *kind == b'S')
        .flat_map(|(_, _, whole)| whole.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend;

    #[test]
    fn statement_and_portal_names_get_the_prefix() {
        let mut msg = BytesMut::new();
        frontend::parse("s1", "SELECT 1", [], &mut msg).unwrap();
        let mut out = BytesMut::new();
        let effect = rename(b'P', &msg[5..], "c7_", &mut out).unwrap();
        assert_eq!(effect, RenameEffect::Prepared(b"s1".to_vec()));
        assert!(out.windows(6).any(|w| w == b"c7_s1\0"));
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );

        let mut msg = BytesMut::new();
        frontend::parse("", "SELECT 1", [], &mut msg).unwrap();
        let mut out = BytesMut::new();
        assert_eq!(rename(b'P', &msg[5..], "c7_", &mut out), Some(RenameEffect::None));
        assert_eq!(&out[..], &msg[..], "the unnamed statement stays unnamed");
    }

    #[test]
    fn uses_of_the_unnamed_statement_are_recognised() {
        let message = |build: &dyn Fn(&mut BytesMut)| {
            let mut msg = BytesMut::new();
            build(&mut msg);
            msg
        };
        let cases = [
            (
                message(&|m| frontend::parse("", "SELECT 1", [], m).unwrap()),
                UnnamedStatement::Parsed,
            ),
            (
                message(&|m| frontend::parse("s1", "SELECT 1", [], m).unwrap()),
                UnnamedStatement::Untouched,
            ),
            (
                message(&|m| frontend::describe(b'S', "", m).unwrap()),
                UnnamedStatement::Used,
            ),
            (
                message(&|m| frontend::describe(b'P', "", m).unwrap()),
                UnnamedStatement::Untouched,
            ),
            (
                message(&|m| frontend::query("SELECT 1", m).unwrap()),
                UnnamedStatement::Dropped,
            ),
            (
                message(&|m| frontend::close(b'S', "", m).unwrap()),
                UnnamedStatement::Dropped,
            ),
            (
                message(&|m| frontend::close(b'S', "s1", m).unwrap()),
                UnnamedStatement::Untouched,
            ),
        ];
        for (msg, expected) in cases {
            assert_eq!(
                unnamed_statement(msg[0], &msg[5..]),
                expected,
                "{:?}",
                msg[0] as char
            );
        }
        let bind = |statement: &str| {
            message(&|m| {
                frontend::bind(
                    "p",
                    statement,
                    [],
                    std::iter::empty::<&[u8]>(),
                    |_: &[u8], _| Ok(postgres_protocol::IsNull::No),
                    [],
                    m,
                )
                .map_err(|_| ())
                .unwrap()
            })
        };
        assert_eq!(unnamed_statement(b'B', &bind("")[5..]), UnnamedStatement::Used);
        assert_eq!(
            unnamed_statement(b'B', &bind("s1")[5..]),
            UnnamedStatement::Untouched
        );
    }

    #[test]
    fn errors_mentioning_a_renamed_statement_show_the_client_name() {
        let reply = error_response("ERROR", "26000", "prepared statement \"c7_s1\" does not exist");
        let back = unrename_reply(&reply, "c7_");
        assert!(String::from_utf8_lossy(&back).contains("prepared statement \"s1\" does not exist"));
        assert_eq!(
            u32::from_be_bytes(back[1..5].try_into().unwrap()) as usize,
            back.len() - 1
        );
    }

    #[test]
    fn ready_status_reads_the_last_ready_for_query() {
        assert_eq!(ready_status(b"Z\0\0\0\x05TZ\0\0\0\x05I"), Some(b'I'));
        assert_eq!(ready_status(b"C\0\0\0\x09SELECT\0"), None);
    }
}
