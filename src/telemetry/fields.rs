//! Span and event fields in the plain (pretty, no colours) log format: byte for byte what
//! tracing-subscriber's `DefaultFields` writes, with the common field — a name and a value
//! — written directly instead of through its styling layers (an unstyled `Style` still
//! formats the name through `Display` twice). Every request span formats three fields:
//! `DefaultFields` spent about 4,400 instructions per request on them.
//!
//! What is not the common case (the `message` field, errors and their sources, raw
//! identifiers, colours) goes to `DefaultVisitor` itself, so its output never drifts; a
//! unit test compares the two on every kind of field.

use crate::transcode::json_text::is_plain;
use std::cell::RefCell;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The fields formatter of the plain log format.
pub(crate) struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    /// The fields go to a buffer first and then out in one write: a span's fields are
    /// kept in a string of their own, which otherwise grows (and is copied) a few bytes at
    /// a time, field by field — four allocations for every request span.
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        thread_local! {
            static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(256));
        }
        // A buffer's writer has no colours and sanitizes escapes, as the log's writer
        // does by default (never changed here); with colours, the log's own writer.
        if writer.has_ansi_escapes() {
            return visit(writer, &fields);
        }
        BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => {
                buffer.clear();
                let result = visit(Writer::new(&mut *buffer), &fields)
                    .and_then(|()| writer.write_str(&buffer));
                if buffer.capacity() > 64 * 1024 {
                    *buffer = String::with_capacity(256);
                }
                result
            }
            // A field whose formatting formats fields (its `Debug` logs): no buffer.
            Err(_) => visit(writer, &fields),
        })
    }
}

fn visit(writer: Writer<'_>, fields: &impl RecordFields) -> fmt::Result {
    let mut visitor = PlainVisitor {
        writer,
        is_empty: true,
        result: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.finish()
}

struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Nothing written yet: the next field needs no separating space.
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// `name=value` as `DefaultVisitor` writes it when it has no style to apply; anything
    /// else is left to `DefaultVisitor` (`record` decides which).
    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pad();
        if self.result.is_ok() {
            self.result = write!(self.writer, "{}={value:?}", field.name());
        }
    }

    /// `name="value"`: a string's `Debug` form, written as is when it needs no escape
    /// (printable ASCII without quotes or backslashes: ids, paths, names).
    fn write_str(&mut self, field: &Field, value: &str) {
        if !is_plain(value) {
            return self.write(field, &value);
        }
        self.pad();
        for part in [field.name(), "=\"", value, "\""] {
            if self.result.is_ok() {
                self.result = self.writer.write_str(part);
            }
        }
    }

    fn finish(self) -> fmt::Result {
        self.result
    }

    fn pad(&mut self) {
        if !std::mem::take(&mut self.is_empty) {
            self.result = self.writer.write_char(' ');
        }
    }

    /// Records one field: directly in the common case, else through `DefaultVisitor`.
    fn record(
        &mut self,
        field: &Field,
        direct: impl FnOnce(&mut Self),
        default: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        let name = field.name();
        if self.writer.has_ansi_escapes() || name == "message" || name.starts_with("r#") {
            self.by_default(field, default);
        } else if self.result.is_ok() && !name.starts_with("log.") {
            direct(self);
        }
    }

    /// Records one field as `DefaultVisitor` does, continuing this visitor's output.
    fn by_default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        // `log.` fields are the log crate's metadata: `DefaultVisitor` skips them too.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(
            field,
            |this| this.write_str(field, value),
            |default| default.record_str(field, value),
        );
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Errors carry their sources: always `DefaultVisitor`'s rendering.
        self.by_default(field, |default| default.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(
            field,
            |this| this.write(field, value),
            |default| default.record_debug(field, value),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Captured;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer failed")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field, in spans (nested, recorded later) and events.
    fn log_everything() {
        let io = std::io::Error::other("inner \u{1b}[31mred");
        let outer = Outer(std::io::Error::other("cause"));
        let span = tracing::info_span!(
            "request",
            quoted = "ab\"c\\d\né",
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
            tab = "a\tb",
            method = %http::Method::GET,
            path = "/v1/x y",
            r#type = "raw",
            empty = tracing::field::Empty,
        );
        let _entered = span.enter();
        span.record("empty", 7);
        let inner = tracing::info_span!("inner", n = 1u64, ok = true);
        let _inner = inner.enter();
        tracing::info!(a = 1, b = -2i64, c = 2.5, d = true, e = ?Some("x"), "plain \u{1b}[1m message {}", 3);
        tracing::warn!(error = &io as &(dyn std::error::Error + 'static), "io");
        tracing::warn!(error = &outer as &(dyn std::error::Error + 'static));
        tracing::info!(message = "only a message field");
        tracing::info!(r#loop = 1, x = "y");
        tracing::info!(target: "switchboard::access", "request");
        tracing::info!(bytes = ?b"\x00\xff", big = u128::MAX, small = i128::MIN);
    }

    fn render(plain: bool, ansi: bool) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(ansi)
            .without_time();
        let dispatch = if plain {
            tracing::Dispatch::new(builder.fmt_fields(PlainFields).finish())
        } else {
            tracing::Dispatch::new(builder.finish())
        };
        tracing::dispatcher::with_default(&dispatch, log_everything);
        captured.text()
    }

    #[test]
    fn the_plain_fields_are_the_default_fields() {
        for ansi in [false, true] {
            let expected = render(false, ansi);
            assert_eq!(render(true, ansi), expected, "ansi: {ansi}");
            assert_eq!(expected.lines().count(), 7, "{expected}");
        }
    }
}
