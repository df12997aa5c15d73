//! What each connection keeps of the shared session: its LISTEN channels and its SET values.
//!
//! `LISTEN`/`UNLISTEN` are read from the SQL of Query and Parse messages; notifications
//! (NotificationResponse) coming out of the backend are taken out of whatever reply carries them
//! and delivered to the connections listening on that channel, and only to them.

/// A LISTEN-family command found in SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenCommand {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

/// The LISTEN/UNLISTEN commands among the statements of `sql`.
pub(crate) fn listen_commands(sql: &str) -> Vec<ListenCommand> {
    let mut commands = Vec::new();
    for statement in split_statements(sql) {
        let statement = statement.trim_start();
        let (keyword, rest) = statement.split_at(
            statement
                .find(|c: char| c.is_whitespace())
                .unwrap_or(statement.len()),
        );
        let keyword = keyword.to_ascii_lowercase();
        // DISCARD ALL includes UNLISTEN *.
        if keyword == "discard" && first_word(rest).eq_ignore_ascii_case("all") {
            commands.push(ListenCommand::UnlistenAll);
            continue;
        }
        if keyword != "listen" && keyword != "unlisten" {
            continue;
        }
        let rest = rest.trim();
        if keyword == "unlisten" && rest.starts_with('*') {
            commands.push(ListenCommand::UnlistenAll);
            continue;
        }
        let Some(channel) = identifier(rest) else { continue };
        commands.push(if keyword == "listen" {
            ListenCommand::Listen(channel)
        } else {
            ListenCommand::Unlisten(channel)
        });
    }
    commands
}

/// Whether `sql` puts the session's authorization back to the session user: `DISCARD ALL`,
/// `RESET SESSION AUTHORIZATION` or `SET SESSION AUTHORIZATION DEFAULT`. The shared session's
/// user is the bootstrap role, not the instance's, so the server sets it again afterwards.
pub(crate) fn resets_authorization(sql: &str) -> bool {
    split_statements(sql).into_iter().any(|statement| {
        let words: Vec<String> = statement
            .split_whitespace()
            .take(5)
            .map(|w| w.trim_end_matches(';').to_ascii_lowercase())
            .collect();
        let mut words: Vec<&str> = words.iter().map(String::as_str).collect();
        // SET SESSION|LOCAL SESSION AUTHORIZATION ... is SET SESSION AUTHORIZATION ...
        if words.len() > 2
            && words[0] == "set"
            && matches!(words[1], "session" | "local")
            && words[2] == "session"
        {
            words.remove(1);
        }
        matches!(
            words.as_slice(),
            ["discard", "all", ..]
                | ["reset", "session", "authorization", ..]
                | ["set", "session", "authorization", "default", ..]
        )
    })
}

/// The query that reads back a connection's share of the session: the settings it changed with
/// SET (but the current transaction's own, which its defaults give each transaction), then its
/// authorization (`SET SESSION AUTHORIZATION`) and role (`SET ROLE`) where they
/// are not the instance's `user` and no role. Those two are not settings RESET ALL touches or
/// `pg_settings` shows, so they are read as pseudo-settings named after their GUCs.
pub(crate) fn settings_query(user: &str) -> String {
    format!(
        "SELECT name, setting FROM pg_settings WHERE source = 'session' AND context IN ('user', 'superuser') \
         AND name NOT IN ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable') \
         UNION ALL SELECT '{AUTHORIZATION}', session_user WHERE session_user <> {} \
         UNION ALL SELECT '{ROLE}', current_setting('role') WHERE current_setting('role') <> 'none'",
        quote_literal(user)
    )
}

/// `SET SESSION AUTHORIZATION` to `role`, the one way the server changes the session's role.
pub(crate) fn set_authorization_sql(role: &str) -> String {
    format!("SET SESSION AUTHORIZATION {};", quote_literal(role))
}

/// The role PGlite's session is authenticated as (initdb's superuser).
const BOOTSTRAP_SUPERUSER: &str = "postgres";

/// The pseudo-setting of a connection's `SET SESSION AUTHORIZATION` (see [`settings_query`]).
const AUTHORIZATION: &str = "session_authorization";
/// The pseudo-setting of a connection's `SET ROLE`.
const ROLE: &str = "role";

/// SQL that gives the shared session `settings` (as [`settings_query`] read them; empty for a
/// connection that changed nothing) on behalf of an instance whose user is `user`: every other
/// setting reset, the settings set as the bootstrap superuser (some need it), then the
/// authorization and role put back, the instance's user and no role unless `settings` say
/// otherwise.
pub(crate) fn apply_settings_sql(settings: &[(String, String)], user: &str) -> String {
    // Not `SET SESSION AUTHORIZATION DEFAULT`: in PGlite's single-user backend that keeps the
    // authorization it resets.
    let mut sql = format!("RESET ALL; {}", set_authorization_sql(BOOTSTRAP_SUPERUSER));
    let (mut authorization, mut role) = (user, None);
    // set_config, not SET: it reads the value as a setting's text, so that a list (search_path
    // = 'public, app') is the list again, where `SET search_path = 'public, app'` would make it
    // one schema named "public, app".
    let mut set_configs = Vec::new();
    for (name, value) in settings {
        match name.as_str() {
            AUTHORIZATION => authorization = value,
            ROLE => role = Some(value),
            _ => set_configs.push(format!(
                "set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(value)
            )),
        }
    }
    if !set_configs.is_empty() {
        sql.push_str(&format!("SELECT {};", set_configs.join(", ")));
    }
    if authorization != BOOTSTRAP_SUPERUSER {
        sql.push_str(&set_authorization_sql(authorization));
    }
    if let Some(role) = role {
        sql.push_str(&format!("SET ROLE {};", quote_literal(role)));
    }
    sql
}

/// A command that acts on the whole session, run per connection instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscardCommand {
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE ALL` (or `DEALLOCATE PREPARE ALL`).
    DeallocateAll,
}

impl DiscardCommand {
    /// Its CommandComplete tag.
    pub fn tag(self) -> &'static str {
        match self {
            DiscardCommand::DiscardAll => "DISCARD ALL",
            DiscardCommand::DeallocateAll => "DEALLOCATE ALL",
        }
    }
}

/// What `DISCARD ALL` does besides `DEALLOCATE ALL`, as PostgreSQL's documentation spells it out.
pub(crate) const DISCARD_ALL_BUT_DEALLOCATE: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
     UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES";

/// The command `sql` is, if it is just `DISCARD ALL` or `DEALLOCATE [PREPARE] ALL`.
pub(crate) fn discard_command(sql: &str) -> Option<DiscardCommand> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["discard", "all"] => Some(DiscardCommand::DiscardAll),
        ["deallocate", "all"] | ["deallocate", "prepare", "all"] => Some(DiscardCommand::DeallocateAll),
        _ => None,
    }
}

/// The first word of `text`.
fn first_word(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| c.is_whitespace() || c == ';')
        .unwrap_or(text.len());
    &text[..end]
}

/// Splits SQL on semicolons outside quotes.
fn split_statements(sql: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quote) = (0, None::<char>);
    for (i, c) in sql.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                parts.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&sql[start..]);
    parts
}

/// A channel name: a quoted identifier keeps its case, an unquoted one is folded to lower case.
fn identifier(text: &str) -> Option<String> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect::<String>()
        .to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// Whether a startup parameter just restates the server's setting (drivers send DateStyle,
/// TimeZone and the like), so that applying it per connection can be skipped.
pub(crate) fn is_server_default(name: &str, value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    match name.to_ascii_lowercase().as_str() {
        "datestyle" => value == "iso, mdy" || value == "iso",
        "timezone" => value == "utc" || value == "etc/utc",
        "intervalstyle" => value == "postgres",
        "extra_float_digits" => value == "1",
        "application_name" => value.is_empty(),
        _ => false,
    }
}

/// The settings a startup packet's `options` parameter (libpq's `PGOPTIONS`, sqlx's
/// `PgConnectOptions::options`) gives, in order: its `-c name=value`, `-cname=value` and
/// `--name=value` switches (dashes in a `--` name read as underscores), after splitting it at
/// unescaped whitespace as Postgres does (`\` escapes the next character). Any other switch is
/// refused with the message Postgres gives for an invalid one.
pub(crate) fn options_settings(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(escaped) = chars.next() {
                    word.push(escaped);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }

    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let (switch, setting) = if let Some(long) = word.strip_prefix("--") {
            ("--", Some(long.to_owned()))
        } else if word == "-c" {
            ("-c", words.next())
        } else if let Some(short) = word.strip_prefix("-c") {
            ("-c", Some(short.to_owned()))
        } else {
            return Err(format!(
                "invalid command-line argument for server process: {word}"
            ));
        };
        let Some(setting) = setting else {
            return Err("-c requires a value".to_owned());
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(match switch {
                "--" => format!("--{setting} requires a value"),
                _ => format!("-c {setting} requires a value"),
            });
        };
        let name = if switch == "--" {
            name.replace('-', "_")
        } else {
            name.to_owned()
        };
        settings.push((name, value.to_owned()));
    }
    Ok(settings)
}

use super::messages::frames;
pub(crate) use crate::backend::{quote_identifier, quote_literal};

/// Splits a backend reply into the part for the client and its NotificationResponse messages,
/// each with its channel.
pub(crate) fn take_notifications(reply: Vec<u8>) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    // Most replies carry none: hand them back without copying.
    if !has_message(&reply, b'A') {
        return (reply, Vec::new());
    }
    let mut kept = Vec::with_capacity(reply.len());
    let mut notifications = Vec::new();
    let mut at = 0;
    while at + 5 <= reply.len() {
        let len = u32::from_be_bytes(reply[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let end = (at + 1 + len).min(reply.len());
        if reply[at] == b'A' {
            let body = &reply[at + 5..end];
            let channel = body
                .get(4..)
                .and_then(|b| b.split(|&c| c == 0).next())
                .unwrap_or_default();
            notifications.push((
                String::from_utf8_lossy(channel).into_owned(),
                reply[at..end].to_vec(),
            ));
        } else {
            kept.extend_from_slice(&reply[at..end]);
        }
        at = end;
    }
    kept.extend_from_slice(&reply[at..]);
    (kept, notifications)
}

/// Whether `reply` contains a message of type `tag`.
fn has_message(reply: &[u8], tag: u8) -> bool {
    frames(reply).any(|(kind, _, _)| kind == tag)
}

/// Whether a reply reports a change of session settings: a SET, RESET or DISCARD statement, or
/// a ParameterStatus (a reported setting changed by any means, `set_config` in a function too).
pub(crate) fn changes_settings(reply: &[u8]) -> bool {
    frames(reply).any(|(kind, tag, _)| {
        kind == b'S'
            || kind == b'C'
                && (tag.starts_with(b"SET\0") || tag.starts_with(b"RESET\0") || tag.starts_with(b"DISCARD"))
    })
}

/// Whether `sql` calls `set_config`, which changes a setting as SET does, without its command
/// tag.
pub(crate) fn calls_set_config(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains("set_config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_give_their_settings_as_postgres_reads_them() {
        let settings = |options: &str| options_settings(options).unwrap();
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(settings(""), pairs(&[]));
        assert_eq!(
            settings("-c search_path=app  -cwork_mem=8MB\t--statement-timeout=5s"),
            pairs(&[
                ("search_path", "app"),
                ("work_mem", "8MB"),
                ("statement_timeout", "5s")
            ])
        );
        // A backslash escapes the next character: a space inside a value, a backslash itself.
        assert_eq!(
            settings(r"-c application_name=my\ app -c search_path=a\\b"),
            pairs(&[("application_name", "my app"), ("search_path", r"a\b")])
        );
        assert_eq!(settings("-c x.y=1=2"), pairs(&[("x.y", "1=2")]));
    }

    #[test]
    fn startup_options_other_than_settings_are_refused_with_postgres_messages() {
        let refused = |options: &str| options_settings(options).unwrap_err();
        assert_eq!(
            refused("-e"),
            "invalid command-line argument for server process: -e"
        );
        assert_eq!(
            refused("search_path=x"),
            "invalid command-line argument for server process: search_path=x"
        );
        assert_eq!(refused("-c"), "-c requires a value");
        assert_eq!(refused("-c work_mem"), "-c work_mem requires a value");
        assert_eq!(refused("--work-mem"), "--work-mem requires a value");
    }

    #[test]
    fn settings_are_set_as_the_superuser_and_the_connections_role_comes_last() {
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            apply_settings_sql(&[], "postgres"),
            "RESET ALL; SET SESSION AUTHORIZATION 'postgres';"
        );
        assert_eq!(
            apply_settings_sql(&[], "app"),
            "RESET ALL; SET SESSION AUTHORIZATION 'postgres';SET SESSION AUTHORIZATION 'app';"
        );
        let settings = owned(&[
            ("role", "carol"),
            ("work_mem", "7MB"),
            ("session_authorization", "bob"),
        ]);
        assert_eq!(
            apply_settings_sql(&settings, "app"),
            "RESET ALL; SET SESSION AUTHORIZATION 'postgres';SELECT set_config('work_mem', '7MB', false);\
             SET SESSION AUTHORIZATION 'bob';SET ROLE 'carol';"
        );
    }

    #[test]
    fn statements_that_give_the_session_back_to_its_session_user_are_recognised() {
        for sql in [
            "DISCARD ALL",
            "discard all;",
            "SELECT 1; RESET SESSION AUTHORIZATION",
            "SET SESSION AUTHORIZATION DEFAULT",
            "set local session authorization default",
        ] {
            assert!(resets_authorization(sql), "{sql}");
        }
        for sql in [
            "DISCARD PLANS",
            "RESET ALL",
            "SET SESSION AUTHORIZATION bob",
            "SET SESSION SESSION AUTHORIZATION bob",
            "SELECT 'discard all'",
        ] {
            assert!(!resets_authorization(sql), "{sql}");
        }
        assert_eq!(listen_commands("DISCARD ALL"), vec![ListenCommand::UnlistenAll]);
        assert_eq!(
            discard_command(" discard  ALL ;"),
            Some(DiscardCommand::DiscardAll)
        );
        assert_eq!(
            discard_command("DEALLOCATE PREPARE ALL"),
            Some(DiscardCommand::DeallocateAll)
        );
        assert_eq!(discard_command("DISCARD ALL; SELECT 1"), None);
        assert_eq!(discard_command("DEALLOCATE s1"), None);
    }

    #[test]
    fn listen_commands_are_found_in_sql() {
        assert_eq!(
            listen_commands("LISTEN jobs"),
            vec![ListenCommand::Listen("jobs".into())]
        );
        assert_eq!(
            listen_commands("listen Jobs; UNLISTEN \"Mixed\"\"Case\"; select 1; unlisten *"),
            vec![
                ListenCommand::Listen("jobs".into()),
                ListenCommand::Unlisten("Mixed\"Case".into()),
                ListenCommand::UnlistenAll
            ]
        );
        assert!(listen_commands("SELECT 'LISTEN x; '").is_empty());
    }

    #[test]
    fn notifications_are_taken_out_of_a_reply() {
        let mut reply = Vec::new();
        reply.extend_from_slice(b"C\0\0\0\x0bNOTIFY\0");
        let body = [&42u32.to_be_bytes()[..], b"jobs\0payload\0"].concat();
        reply.push(b'A');
        reply.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        reply.extend_from_slice(&body);
        reply.extend_from_slice(b"Z\0\0\0\x05I");
        let (kept, notifications) = take_notifications(reply);
        assert_eq!(kept, b"C\0\0\0\x0bNOTIFY\0Z\0\0\0\x05I");
        assert_eq!(notifications.len(), 1);
        assert_eq!(notifications[0].0, "jobs");
    }
}
