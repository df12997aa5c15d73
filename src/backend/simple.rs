//! Text results of the simple query protocol, for callers that want rows rather than bytes.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};

/// An ErrorResponse or NoticeResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerMessage {
    /// `ERROR`, `FATAL`, `NOTICE`, ... (not localised).
    pub severity: String,
    /// The SQLSTATE, e.g. `22012` for division by zero.
    pub code: String,
    /// The primary message.
    pub message: String,
}

impl std::fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)
    }
}

impl ServerMessage {
    pub(crate) fn from_fields(mut fields: ErrorFields<'_>) -> ServerMessage {
        let mut out = ServerMessage::default();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                _ => {}
            }
        }
        out
    }
}

/// The result of one statement of a simple query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementResult {
    /// Column names (empty for statements that return no rows).
    pub columns: Vec<String>,
    /// Rows in text format; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag, e.g. `INSERT 0 1` or `SELECT 3`.
    pub tag: String,
}

/// A notification delivered by `NOTIFY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The channel.
    pub channel: String,
    /// The payload.
    pub payload: String,
}

/// Everything a simple query (`Q` message) returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimpleQueryOutput {
    /// One entry per statement that completed.
    pub statements: Vec<StatementResult>,
    /// The error that ended the query string, if any.
    pub error: Option<ServerMessage>,
    /// Notices raised (RAISE NOTICE, warnings).
    pub notices: Vec<ServerMessage>,
    /// Notifications received.
    pub notifications: Vec<Notification>,
    /// The transaction status at the end: `I` idle, `T` in a transaction, `E` failed transaction.
    pub transaction_status: u8,
}

impl SimpleQueryOutput {
    /// Parses the backend's reply to a simple query.
    ///
    /// ```
    /// use pglite_harness::SimpleQueryOutput;
    ///
    /// // CommandComplete "CREATE TABLE", then ReadyForQuery (idle)
    /// let out = SimpleQueryOutput::parse(b"C\0\0\0\x11CREATE TABLE\0Z\0\0\0\x05I");
    /// assert_eq!(out.statements[0].tag, "CREATE TABLE");
    /// assert_eq!((out.error, out.transaction_status), (None, b'I'));
    /// ```
    pub fn parse(reply: &[u8]) -> SimpleQueryOutput {
        let mut out = SimpleQueryOutput::default();
        let mut current = StatementResult::default();
        let mut buf = bytes::BytesMut::from(reply);
        while let Ok(Some(message)) = Message::parse(&mut buf) {
            match message {
                Message::RowDescription(body) => {
                    current.columns = body
                        .fields()
                        .map(|f| Ok(f.name().to_owned()))
                        .collect()
                        .unwrap_or_default();
                }
                Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let row = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()
                        .unwrap_or_default();
                    current.rows.push(row);
                }
                Message::CommandComplete(body) => {
                    current.tag = body.tag().unwrap_or_default().to_owned();
                    out.statements.push(std::mem::take(&mut current));
                }
                Message::EmptyQueryResponse => out.statements.push(std::mem::take(&mut current)),
                Message::ErrorResponse(body) => out.error = Some(ServerMessage::from_fields(body.fields())),
                Message::NoticeResponse(body) => out.notices.push(ServerMessage::from_fields(body.fields())),
                Message::NotificationResponse(body) => out.notifications.push(Notification {
                    channel: body.channel().unwrap_or_default().to_owned(),
                    payload: body.message().unwrap_or_default().to_owned(),
                }),
                Message::ReadyForQuery(body) => out.transaction_status = body.status(),
                _ => {}
            }
        }
        out
    }

    /// The rows of the last statement that returned any columns.
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// let out = backend.simple_query("SELECT n, n * n FROM generate_series(1, 3) n")?;
    /// assert_eq!(out.rows().len(), 3);
    /// assert_eq!(out.rows()[1], [Some("2".to_owned()), Some("4".to_owned())]);
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn rows(&self) -> &[Vec<Option<String>>] {
        self.statements
            .iter()
            .rev()
            .find(|s| !s.columns.is_empty())
            .map_or(&[], |s| &s.rows)
    }

    /// The first column of the first row of [`rows`](Self::rows), if any and not NULL.
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// assert_eq!(backend.simple_query("SELECT 'a' || 'b'")?.scalar(), Some("ab"));
    /// assert_eq!(backend.simple_query("SELECT NULL")?.scalar(), None);
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn scalar(&self) -> Option<&str> {
        self.rows().first()?.first()?.as_deref()
    }
}
